"""The README's own examples, run as they are written there (read from README.md, so an edit
of the README is tested too)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_function(name: str):
    """The function *name* defined in one of the README's ```python blocks."""
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        if f"def {name}(" in block:
            namespace: dict = {}
            exec(compile(block, f"{README} ({name})", "exec"), namespace)  # noqa: S102 - our README
            return namespace[name]
    raise AssertionError(f"README.md has no ```python block defining {name}")


def test_round_trip_as_in_the_readme(guest, tmp_path, monkeypatch):
    readme_function("test_round_trip")(guest, tmp_path)
    # "relative: the login user's home": the file is there, not in the command's working directory
    home = guest.run(f"getent passwd {guest.user}", check=True).stdout.split(":")[5]
    assert guest.run(f"cat {home}/data.txt", cwd="/").stdout == "hi\n"
    # relative local paths are the test's working directory, as for open()
    monkeypatch.chdir(tmp_path)
    Path("local.txt").write_text("from the cwd\n")
    guest.put("local.txt", "copy.txt")
    assert guest.run(f"cat {home}/copy.txt", cwd="/").stdout == "from the cwd\n"
    guest.get("copy.txt", "back-again.txt")
    assert (tmp_path / "back-again.txt").read_text() == "from the cwd\n"


def test_first_test_as_in_the_readme(guest):
    readme_function("test_kernel")(guest)
