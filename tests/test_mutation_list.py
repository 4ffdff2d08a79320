"""The planted-bug list of tests/mutation/ stays applicable: every edit's `old` text occurs exactly once
in its file (so a refactor that moves the code makes this fail, not the mutant silently vanish), the
new text differs, and every mutant names tests that exist."""
from collections import Counter

from .mutation.mutants import MUTANTS
from .test_packaging import ROOT


def test_mutants_are_well_formed():
    assert len(MUTANTS) >= 20
    ids = Counter(m["id"] for m in MUTANTS)
    assert not [i for i, n in ids.items() if n > 1], "duplicate ids"
    assert {m["side"] for m in MUTANTS} == {"py", "c", "both"}
    for m in MUTANTS:
        assert set(m) == {"id", "side", "why", "edits", "tests"}, m["id"]
        assert m["edits"] and m["tests"] and m["why"], m["id"]
        files = [f for f, _, _ in m["edits"]]
        if m["side"] == "both":
            assert any(f.endswith(".py") for f in files) and any(f.startswith("runtime_c/") for f in files), m["id"]
        for f, old, new in m["edits"]:
            src = (ROOT / f).read_text()
            assert src.count(old) == 1, f"{m['id']}: the old text occurs {src.count(old)} times in {f}"
            assert old != new, m["id"]
        for t in m["tests"]:
            if t.startswith("tests/"):
                assert (ROOT / t.split("::")[0]).is_file(), f"{m['id']}: {t}"
