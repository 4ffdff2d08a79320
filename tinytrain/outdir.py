"""Output folders that never lose a user's file.

Every command that writes a folder (compile, train, quantize, mezo) goes through `prepare`:

    with prepare(args.output, force=args.force, command="compile") as tmp:
        ...write everything into tmp...

- `prepare` checks the target before any work: an existing file, a parent that is a file, a
  folder that cannot be written, a non-empty folder tinytrain did not write (no manifest, refused
  unless force) and generated files the user has modified since (refused unless force) each give
  one `TinytrainError` line.
- The work is written into a temporary sibling folder (`.NAME.tmp-XXXX`, same filesystem) that is
  moved into place only when the block ends normally; an exception (a failed budget, Ctrl-C)
  removes it and leaves the target as it was.
- The target gets a manifest (MANIFEST: tool version, and for every file written its relative
  path, sha256 and the command that wrote it).  Committing into a folder that has one replaces
  exactly the files the same command wrote before (those it no longer writes are removed when
  unmodified) and keeps every other file: a user's, and those of other commands (`mezo --replay`
  into its training folder keeps the checkpoint; `compile` beside `train` keeps the model).
  With force, a folder without a manifest or a modified generated file is overwritten only where
  tinytrain writes a file of the same path; nothing else is ever deleted.
"""
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .compiler.errors import TinytrainError
from .compiler.options import sha256

MANIFEST = ".tinytrain-manifest.json"


def _fail(msg):
    raise TinytrainError(msg)


def read_manifest(folder):
    """The manifest's {relative path: {"sha256", "command"}} of a folder, or None without one."""
    p = Path(folder) / MANIFEST
    if not p.exists() and not p.is_symlink():
        return None
    try:
        m = json.loads(p.read_text())
        files = m["files"]
        if not isinstance(files, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("sha256"), str)
                and isinstance(v.get("command"), str) for k, v in files.items()):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        _fail(f"{p} is not a tinytrain manifest (remove it or choose another -o)")
    for rel in files:
        r = Path(rel)
        if r.is_absolute() or ".." in r.parts or not r.parts:
            _fail(f"{p} lists a path outside the folder: {rel!r}")
    return files


def _modified(folder, files, command=None):
    """The manifest's files (of `command`, or all) that exist but no longer hold what tinytrain wrote."""
    out = []
    for rel, entry in sorted(files.items()):
        if command is not None and entry["command"] != command:
            continue
        p = Path(folder) / rel
        if p.is_symlink() or (p.exists() and (not p.is_file() or sha256(p) != entry["sha256"])):
            out.append(rel)
    return out


def _writable(d):
    return os.access(d, os.W_OK | os.X_OK)


def _refuse_modified(target, modified):
    more = f" (and {len(modified) - 1} more)" if len(modified) > 1 else ""
    _fail(f"{target / modified[0]}{more} was written by tinytrain and has been modified since: "
          "keep your edits elsewhere, or pass --force to overwrite it")


class Staging:
    """The context manager `prepare` returns: yields the temporary folder, commits on success."""

    def __init__(self, target, force, command, version):
        self.target, self.force, self.command, self.version = target, force, command, version
        self.tmp = None
        self.committed = False

    def __enter__(self):
        # inside an existing target (`-o .`, a mount point: its parent may not be writable), else
        # in the nearest existing ancestor; the same filesystem either way
        anchor, prefix = self.target, ".tinytrain.tmp-"
        if not self.target.is_dir():
            anchor, prefix = self.target.parent, f".{self.target.name}.tmp-"
            while not anchor.exists():
                anchor = anchor.parent
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=anchor))
        except OSError as e:
            _fail(f"cannot write in {anchor}: {e.strerror}")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self.tmp, 0o777 & ~mask)      # the permissions a plain mkdir gives, not mkdtemp's 0700
        return self.tmp

    def __exit__(self, kind, value, tb):
        try:
            if kind is None and not self.committed:
                self.commit()
        finally:
            if self.tmp is not None and self.tmp.exists():
                shutil.rmtree(self.tmp, ignore_errors=True)
        return False

    def commit(self):
        """Move the staged files into the target (the block's normal end does this)."""
        if self.committed:
            return
        files = {}
        for p in sorted(self.tmp.rglob("*")):
            if p.is_file() or p.is_symlink():
                rel = p.relative_to(self.tmp).as_posix()
                if rel != MANIFEST:
                    files[rel] = {"sha256": sha256(p), "command": self.command}
        t = self.target
        if not t.exists():
            (self.tmp / MANIFEST).write_text(self._text(files))
            t.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp, t)
            self.committed = True
            return
        self._merge(files)
        self.committed = True

    def _text(self, files):
        return json.dumps({"tool": "tinytrain", "version": self.version, "command": self.command,
                           "files": dict(sorted(files.items()))}, indent=1) + "\n"

    def _merge(self, files):
        """Into an existing target: check everything first, then move file by file."""
        t = self.target
        old = read_manifest(t)
        if old is None and not self.force and any(p != self.tmp for p in t.iterdir()):
            _fail(f"{t} is not empty and was not written by tinytrain (no {MANIFEST}): choose another -o, "
                  "or pass --force (only the files tinytrain writes are replaced)")
        old = old or {}
        modified = set(_modified(t, old))      # edits to a file this run rewrites or removes: refused
        clash = sorted(r for r in modified if r in files or old[r]["command"] == self.command)
        if clash and not self.force:
            _refuse_modified(t, clash)
        foreign = []
        for rel in files:
            dst = t / rel
            for parent in list(Path(rel).parents)[:-1]:
                if (t / parent).exists() and not (t / parent).is_dir():
                    _fail(f"{t / parent} is a file where tinytrain writes the folder {parent.as_posix()}/")
            if dst.is_dir() and not dst.is_symlink():
                _fail(f"{dst} is a folder where tinytrain writes a file")
            if (dst.exists() or dst.is_symlink()) and rel not in old:
                foreign.append(rel)
        if foreign and not self.force:
            more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
            _fail(f"{t / foreign[0]}{more} exists and was not written by tinytrain: move it, or pass --force "
                  "to overwrite it")
        for rel in files:
            dst = t / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_symlink():
                dst.unlink()                   # replace the link, never the file it points to
            os.replace(self.tmp / rel, dst)
        kept = {}
        for rel in sorted(set(old) - set(files)):
            dst = t / rel
            if old[rel]["command"] != self.command:
                if dst.is_file() and not dst.is_symlink():
                    kept[rel] = old[rel]       # another command's file (its entry, edited or not)
                continue
            if rel not in modified:            # a user's edit is never deleted (nor listed any more)
                _remove(t, rel)
        tmp_manifest = self.tmp / MANIFEST
        tmp_manifest.write_text(self._text({**kept, **files}))
        os.replace(tmp_manifest, t / MANIFEST)


def _remove(folder, rel):
    """Delete folder/rel (a file tinytrain wrote, unmodified) and the folders this leaves empty."""
    dst = folder / rel
    if not dst.is_file() or dst.is_symlink() or not dst.resolve().is_relative_to(folder):
        return
    dst.unlink()
    for parent in dst.parents:
        if parent == folder or not parent.is_relative_to(folder):
            break
        try:
            parent.rmdir()
        except OSError:
            break


@contextmanager
def in_place(path, force=False, command=None):
    """For a folder a command builds in place (`build`/`run`: BUILD_DIR/<board>/, whose files the
    toolchain writes by path): on entry remove the files the same command wrote there before
    (unmodified ones; an edited one is refused unless force), nothing else; on exit, failed or
    not, record in the manifest every file written meanwhile."""
    from . import __version__
    folder = Path(path).resolve()
    if folder.exists() and not folder.is_dir():
        _fail(f"{path} is a file, not a folder")
    old = read_manifest(folder) if folder.is_dir() else None
    if old is None and folder.is_dir() and any(folder.iterdir()) and not force:
        _fail(f"{path} is not empty and was not written by tinytrain (no {MANIFEST}): move its files, "
              "or pass --force (only the files tinytrain writes are replaced)")
    old = old or {}
    modified = _modified(folder, old, command)
    if modified and not force:
        _refuse_modified(folder, modified)
    for rel, entry in old.items():
        if entry["command"] == command and rel not in modified:
            _remove(folder, rel)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _fail(f"cannot create {path}: {e.strerror}")
    def present():
        return {p.relative_to(folder).as_posix(): sha256(p) for p in folder.rglob("*")
                if p.is_file() and not p.is_symlink() and p.name != MANIFEST}
    before = present()
    try:
        yield Path(path)
    finally:
        files = {rel: e for rel, e in old.items() if e["command"] != command and (folder / rel).is_file()}
        files.update({rel: {"sha256": h, "command": command} for rel, h in present().items()
                      if before.get(rel) != h})
        (folder / (MANIFEST + ".tmp")).write_text(Staging(folder, force, command, __version__)._text(files))
        os.replace(folder / (MANIFEST + ".tmp"), folder / MANIFEST)


def prepare(path, force=False, command=None):
    """Check the output folder `path` before any work -> a Staging context manager.
    Raises TinytrainError (one line) when the folder cannot or must not be written."""
    from . import __version__
    target = Path(path).resolve()   # a link to a folder: stage beside the real one
    if target.exists() and not target.is_dir():
        _fail(f"{path} is a file, not a folder")
    if target.is_dir():
        if not _writable(target):
            _fail(f"{path} is not writable")
        old = read_manifest(target)
        if old is None:
            if any(target.iterdir()) and not force:
                _fail(f"{path} is not empty and was not written by tinytrain (no {MANIFEST}): choose another -o, "
                      "or pass --force (only the files tinytrain writes are replaced)")
        else:
            modified = _modified(target, old, command)
            if modified and not force:
                _refuse_modified(target, modified)
    else:
        anchor = target.parent
        while not anchor.exists() and not anchor.is_symlink():
            anchor = anchor.parent
        if not anchor.is_dir():
            _fail(f"cannot create {path}: {anchor} is not a folder")
        if not _writable(anchor):
            _fail(f"cannot create {path}: {anchor} is not writable")
    return Staging(target, force, command, __version__)
