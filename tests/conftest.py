"""Test-session setup: numba compiles into a fresh cache folder for every session.

A kernel cached by an earlier session (or by another checkout) can never stand in for the code
under test.  Set NUMBA_CACHE_DIR yourself to reuse a cache between sessions.
"""
import os
import shutil
import tempfile

_FRESH = None
if not os.environ.get("NUMBA_CACHE_DIR"):          # before any test module imports numba
    _FRESH = tempfile.mkdtemp(prefix="tinytrain-test-numba-")
    os.environ["NUMBA_CACHE_DIR"] = _FRESH


def pytest_unconfigure(config):
    if _FRESH is not None:
        shutil.rmtree(_FRESH, ignore_errors=True)
