"""examples/ (what the README tells a newcomer to copy) passes as a user runs it."""
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_pass(pytester):
    result = pytester.runpytest_subprocess(str(EXAMPLES), "--kvm-os", "debian-12", "-v",
                                           "-p", "no:cacheprovider", timeout=1500)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_project_suite_passes_in_the_guest PASSED*"])
