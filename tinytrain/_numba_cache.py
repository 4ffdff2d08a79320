"""Where numba keeps its compiled kernels: a per-user folder, never the installed package.

`@njit(cache=True)` would otherwise write .nbi/.nbc files into the package's __pycache__: pip's
uninstall leaves them behind (the leftover site-packages/tinytrain/ then shadows a later editable
install), and numba keys its index on the mtime and size of the file that holds a kernel only, so
a kernel compiled before a helper it inlines (compiler/quant/fixedpoint.py, ...) changed is served
again.  Here the folder's name is a hash of tinytrain's version and of the bytes of every .py file
of tinytrain and tinytrain.compiler: changed sources get a fresh folder, so a stale kernel is
never found.

`configure()` runs first thing in tinytrain/__init__.py, before any module imports numba (numba
reads NUMBA_CACHE_DIR when it is imported, and again whenever it compiles).  A NUMBA_CACHE_DIR the
user set is left alone.
"""
import hashlib
import os
import sys
from pathlib import Path

ENV = "NUMBA_CACHE_DIR"
KEEP = 8                        # cache folders of older source versions kept beside the current one

_HERE = Path(__file__).resolve().parent
_digest = None


def source_roots():
    """The folders of tinytrain and tinytrain.compiler: tinytrain/ and compiler/ in a checkout,
    tinytrain/ and tinytrain/compiler/ in a wheel."""
    roots = [_HERE]
    for d in (_HERE / "compiler", _HERE.parent / "compiler"):
        if (d / "__init__.py").is_file():
            r = d.resolve()
            if r != _HERE and _HERE not in r.parents:     # not already walked as part of tinytrain/
                roots.append(r)
            break
    return roots


def source_hash(version, roots=None):
    """Hex digest of `version` and every .py file of the package (its path inside tinytrain/, as
    in a wheel, and its bytes): the same sources give the same digest in either layout."""
    roots = roots if roots is not None else source_roots()
    files = []
    for i, root in enumerate(roots):
        prefix = "" if i == 0 else "compiler/"
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
            for f in filenames:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    files.append((prefix + os.path.relpath(path, root).replace(os.sep, "/"), path))
    h = hashlib.sha256(f"tinytrain {version}\n".encode())
    for rel, path in sorted(files):
        with open(path, "rb") as fh:
            data = fh.read()
        h.update(f"{rel}:{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()[:16]


def _base():
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg)
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"])
    return Path.home() / ".cache"


def _writable(path):
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _prune(parent, current):
    """Remove the oldest folders of earlier source versions, keeping KEEP of them."""
    import shutil
    try:
        old = sorted((p for p in parent.iterdir() if p.is_dir() and p.name != current.name),
                     key=lambda p: p.stat().st_mtime)
    except OSError:
        return
    for p in old[:max(0, len(old) - KEEP)]:
        shutil.rmtree(p, ignore_errors=True)


def cache_dir(version):
    """The cache folder for this version and these sources (created; a temporary folder if the
    user's cache folder is not writable)."""
    global _digest
    if _digest is None:
        _digest = source_hash(version)
    name = f"{version}-{_digest}"
    try:
        parent = _base() / "tinytrain" / "numba"
    except RuntimeError:                       # no home directory
        parent = None
    if parent is not None:
        d = parent / name
        fresh = not d.is_dir()
        if _writable(d):
            if fresh:
                _prune(parent, d)
            return d
    import tempfile
    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    d = Path(tempfile.gettempdir()) / f"tinytrain-numba-{uid}" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def configure(version):
    """Point numba's cache at cache_dir(version) unless NUMBA_CACHE_DIR is already set."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    try:
        d = str(cache_dir(version))
    except OSError:
        return None                            # nowhere to write: numba keeps its own default
    os.environ[ENV] = d
    config = getattr(sys.modules.get("numba"), "config", None)
    if config is not None:                     # numba was imported before tinytrain
        config.CACHE_DIR = d
    return d
