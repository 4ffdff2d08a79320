"""Plant the bugs of tests/mutation/mutants.py one at a time and check that the tests catch each.

    .venv/bin/python tests/mutation/run.py                 # every mutant (about 5 minutes; CI runs it)
    .venv/bin/python tests/mutation/run.py --only ties-c,crc-poly --no-baseline

The repository (its tracked and untracked, not ignored, files) is copied to a temporary folder; the
working tree is never touched.  In the copy, tinytrain/compiler is a link to compiler/ (pyproject's
package-dir mapping), and the tests run there with PYTHONPATH at the copy, so the copy's code is
what imports (checked before the first mutant), not the editable install's checkout.  Each mutant is
applied, its tests run with a fresh NUMBA_CACHE_DIR (no kernel compiled from the unmutated code can
answer), then the files are restored.  First, a baseline: every test selection must pass on the
unmutated copy, or a "caught" would mean nothing.

Prints, per mutant, `caught` (with the first failing test) or `SURVIVED`, then the catch rate.
Exit status 0 when every mutant was caught.  Not part of the pytest suite (.ci/run calls it before the suite);
tests/test_mutation_list.py keeps the list applicable.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import MUTANTS  # noqa: E402

IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.nbi", "*.nbc", "*.so", "*.o", "build", "dist",
                                "out", "*.egg-info", ".pytest_cache")


def copy_repo(dest):
    """The checkout's tracked and untracked (not ignored) files, as they are in the working tree."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                             capture_output=True).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = None
    if files is None:
        shutil.copytree(ROOT, dest, ignore=IGNORE, dirs_exist_ok=True)
    else:
        for f in files:
            src = ROOT / f
            if src.is_file():
                (dest / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / f)
    # tinytrain.compiler is compiler/ (pyproject's package-dir): one package tree, as in a wheel
    (dest / "tinytrain" / "compiler").symlink_to(Path("..") / "compiler", target_is_directory=True)


def env_for(copy, cache):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR")}
    env.update(PYTHONPATH=str(copy), NUMBA_CACHE_DIR=str(cache), PYTHONDONTWRITEBYTECODE="1")
    return env


def check_imports(copy, cache):
    code = ("import tinytrain, tinytrain.boards as b, tinytrain.compiler.quant.fixedpoint as f, "
            "tinytrain.compiler.codegen.emit_c as e, tests.cbuild as c;"
            "print(tinytrain.__file__); print(f.__file__); print(e.runtime_dir()); print(b.boards_dir());"
            "print(c.ROOT)")
    res = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env_for(copy, cache), capture_output=True,
                         text=True, timeout=300)
    if res.returncode:
        sys.exit(f"run.py: the copy does not import:\n{res.stderr}")
    for line in res.stdout.split("\n"):
        if line and not Path(line).resolve().is_relative_to(copy.resolve()):
            sys.exit(f"run.py: {line} is imported from outside the copy {copy}: the mutants would not be tested")
    return res.stdout.split()


def run_tests(copy, tests, timeout, work):
    """-> (status, detail, seconds); status: pass, fail, error, timeout, none (no tests collected)."""
    cache = Path(tempfile.mkdtemp(prefix="numba-", dir=work))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rfE", *tests]
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, cwd=copy, env=env_for(copy, cache), capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result within {timeout} s", time.monotonic() - t0
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    dt = time.monotonic() - t0
    out = res.stdout + res.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
    if res.returncode == 0:
        return "pass", "", dt
    # the first informative line of the first failure's error (numpy puts its message on later lines)
    lines = [ln.strip() for ln in re.findall(r"^E\s+(\S.*)$", out, re.M)]
    why = next((ln for ln in lines if not re.fullmatch(r"[\w.]+:?", ln)), lines[0] if lines else "")
    why = f": {why[:140]}" if why else ""
    if res.returncode == 1:
        return "fail", (failed[0] if failed else "a test failed") + why, dt
    if res.returncode == 5:
        return "none", "no tests collected", dt
    last = [ln for ln in out.strip().split("\n") if ln.strip()][-1:] or ["?"]
    return "error", (failed[0] if failed else last[0])[:160], dt


def apply(copy, edits):
    saved = {}
    for f, old, new in edits:
        p = copy / f
        saved.setdefault(p, p.read_text())
        src = p.read_text()
        if src.count(old) != 1:
            raise SystemExit(f"run.py: the old text of an edit occurs {src.count(old)} times in {f}")
        p.write_text(src.replace(old, new, 1))
    return saved


def restore(saved):
    for p, text in saved.items():
        p.write_text(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated mutant ids")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of each test selection")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per test run (default 600)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m['id']:28} {m['side']:4}  {m['why']}  [{' '.join(m['tests'])}]")
        return 0
    mutants = MUTANTS
    if args.only:
        want = args.only.split(",")
        unknown = set(want) - {m["id"] for m in MUTANTS}
        if unknown:
            ap.error(f"unknown mutant ids: {', '.join(sorted(unknown))}")
        mutants = [m for m in MUTANTS if m["id"] in want]
    work = Path(tempfile.mkdtemp(prefix="tinytrain-mutation-"))
    copy = work / "repo"
    copy.mkdir()
    t_start = time.monotonic()
    try:
        copy_repo(copy)
        where = check_imports(copy, work / "numba-check")
        print(f"copy: {copy} (tinytrain from {where[0]}, runtime_c {where[2]})", flush=True)
        bad_baseline = set()
        if not args.no_baseline:
            for tests in dict.fromkeys(tuple(m["tests"]) for m in mutants):
                status, detail, dt = run_tests(copy, list(tests), args.timeout, work)
                print(f"baseline {' '.join(tests)}: {status} {detail} ({dt:.0f} s)", flush=True)
                if status != "pass":
                    bad_baseline.add(tests)
        results = []
        for i, m in enumerate(mutants, 1):
            if tuple(m["tests"]) in bad_baseline:
                results.append((m, "skipped", "its tests fail unmutated"))
                print(f"[{i:2}/{len(mutants)}] {m['id']:28} {m['side']:4}  skipped (its tests fail unmutated)",
                      flush=True)
                continue
            saved = apply(copy, m["edits"])
            try:
                status, detail, dt = run_tests(copy, m["tests"], args.timeout, work)
            finally:
                restore(saved)
            verdict = {"fail": "caught", "error": "caught", "pass": "SURVIVED", "none": "NO TESTS",
                       "timeout": "TIMEOUT"}[status]
            results.append((m, verdict, detail))
            print(f"[{i:2}/{len(mutants)}] {m['id']:28} {m['side']:4}  {verdict:8} {detail} ({dt:.0f} s)", flush=True)
        counted = [r for r in results if r[1] != "skipped"]
        caught = [r for r in counted if r[1] == "caught"]
        print(f"\ncatch rate: {len(caught)}/{len(counted)} ({100 * len(caught) / max(1, len(counted)):.0f}%)"
              f" in {(time.monotonic() - t_start) / 60:.1f} min")
        for m, verdict, detail in results:
            if verdict != "caught":
                print(f"  {verdict}: {m['id']} ({m['side']}): {m['why']}; ran {' '.join(m['tests'])}")
        return 0 if len(caught) == len(results) else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
