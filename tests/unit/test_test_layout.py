"""The suite's own layout: pytest imports test modules by basename (no packages), so a
unit and an end-to-end module of the same name break collection of the whole suite."""
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent  # tests/: unit/<subpackage>/ mirrors pytest_kvm/


def test_test_module_basenames_are_unique_across_unit_and_e2e():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, count in names.items() if count > 1] == []
