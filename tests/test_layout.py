"""The package's shape, checked: imports point one way, and only config.py and cli/ touch OmegaConf."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fmnist"
# Lower layers never import higher ones (same layer: allowed).
LAYERS = {"errors": 0, "paths": 0, "world": 0, "config": 0, "runtime": 1, "artifacts": 1, "data": 2, "models": 2,
          "train": 3, "inference": 4, "cli": 5}
MODULES = sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent == SRC)


def part(path: Path) -> str:
    """The layer a source file belongs to: its folder under fmnist/, or its own name at the top."""
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("path", [p for p in MODULES if part(p) in LAYERS], ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_one_way(path: Path):
    mine = LAYERS[part(path)]
    for name in imports(path):
        if name.startswith("fmnist."):
            target = name.split(".")[1]
            assert LAYERS.get(target, 0) <= mine, f"{path.relative_to(SRC)} imports {name}, a higher layer"


def test_only_config_and_the_entry_points_read_omegaconf():
    readers = {str(p.relative_to(SRC)) for p in MODULES
               if any(n.split(".")[0] == "omegaconf" for n in imports(p)) or "DictConfig" in p.read_text()}
    assert readers and all(r == "config.py" or r.startswith("cli/") for r in readers), sorted(readers)
