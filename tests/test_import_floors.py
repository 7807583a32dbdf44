"""The house's floors: core <- tasks <- judges <- prm <- rl <- bench. A package imports only from its own
floor and those below it (every import statement counts, also one inside a function); tests may import
anything. A failure names the file, its 1-based line and the import that runs back up."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOORS = ["core", "tasks", "judges", "prm", "rl", "bench"]


def upward_imports(root: Path) -> list[str]:
    """'file:line: import X (floor a imports floor b)' for every import that runs back up."""
    found = []
    for floor, package in enumerate(FLOORS):
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in FLOORS and FLOORS.index(top) > floor:
                        found.append(f"{path.relative_to(root)}:{node.lineno}: import {name} "
                                     f"({package} is below {top})")
    return found


def test_no_import_runs_back_up():
    assert upward_imports(ROOT) == []


def test_every_package_has_a_floor():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "configs"}
    assert packages <= set(FLOORS), packages - set(FLOORS)


@pytest.mark.parametrize("package, statement, upper", [
    ("core", "from prm.model import EnsemblePRM", "prm"),
    ("tasks", "    import rl.online", "rl"),         # inside a function: still an arrow
    ("judges", "import tasks.chain.labels, rl.loop", "rl"),
])
def test_a_planted_upward_import_fails_naming_file_line_and_import(tmp_path, package, statement, upper):
    for floor in FLOORS:
        (tmp_path / floor).mkdir()
    body = f"def f():\n{statement}\n" if statement.startswith(" ") else f'"""doc"""\n{statement}\n'
    (tmp_path / package / "planted.py").write_text(body)
    (found,) = upward_imports(tmp_path)
    assert found.startswith(f"{package}/planted.py:2: import {upper}") and f"below {upper}" in found
