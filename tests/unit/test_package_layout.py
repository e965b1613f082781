"""The package's shape: imports between its parts run one way (the README's layout table,
top to bottom), base modules import no subpackage, and no module grows past 600 lines.
Only imports that run when a module is imported count (not those in functions or under
TYPE_CHECKING: those load on demand and cannot form an import cycle)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_kvm"
# each part may import the parts after it, never one before it (base modules: any of them)
ORDER = ["plugin", "cli", "session", "config", "guest", "hosts", "networks", "cleanup",
         "images", "vm", "transport", "seed", "spec"]
TOP = {"cli", "config", "spec"}  # top-level modules that are parts of their own, not base
LIMIT = 600


def part_of(parts: tuple[str, ...]) -> str:
    if len(parts) > 1:
        return parts[0]
    name = parts[0].removesuffix(".py")
    return name if name in TOP else "base"


def module_imports(path: Path) -> set[str]:
    """The parts of the package *path* imports at import time."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(rel[:-1])[: len(rel) - node.level]
            target = base + (node.module.split(".") if node.module else [])
            if not target:  # ``from . import x`` at the top: x is a module or a part
                found.update(part_of((alias.name, "x") if (PACKAGE / alias.name).is_dir()
                                     else (alias.name,)) for alias in node.names)
            else:
                found.add(part_of(tuple(target) if (PACKAGE / target[0]).is_dir()
                                  else (target[0],)))
    return found - {part_of(rel)}


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
    rel = path.relative_to(PACKAGE).parts
    here = part_of(rel)
    for target in module_imports(path):
        if here == "base":
            assert target == "base", f"base module {path.name} imports the subpackage {target}"
        elif target != "base":
            assert ORDER.index(target) > ORDER.index(here), \
                f"{'/'.join(rel)} ({here}) imports {target}, which comes before it in {ORDER}"


def test_every_part_is_in_the_order():
    parts = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert parts == set(ORDER) - TOP


def test_no_module_over_the_limit():
    long = {str(p.relative_to(PACKAGE)): n for p in modules()
            if (n := len(p.read_text().splitlines())) > LIMIT}
    assert long == {}
