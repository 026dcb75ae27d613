"""Module layout rules that keep the import graph a tree where it matters."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_provenance_is_a_leaf():
    """Solvers and the prior registry report into restore.provenance; it imports neither (nor anything of ours)."""
    assert not {m for m in _imports(REPO / "restore" / "provenance.py") if m.startswith("restore")}


def test_benchmarks_share_pieces_through_common_not_each_other():
    assert not {m for m in _imports(REPO / "benchmarks" / "classical.py") if m.startswith("benchmarks.quality")}
    assert "benchmarks.common.tasks" in _imports(REPO / "benchmarks" / "quality.py")
