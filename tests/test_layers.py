"""The package's layers import downward only: ``models/`` and ``metrics/`` are the bottom, ``data/`` sits
beside them and knows nothing of models (a stage hands the DataModule what it should stream)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_fcae"
# a subpackage -> the package modules it must not import (subpackages, or top-level modules by name)
FORBIDDEN = {
    "data": {"models", "stages", "clip_features", "pipeline", "reconstruct"},
}


def imported_modules(path: Path) -> set[str]:
    """The ``lightning_fcae`` modules a file imports, as dotted names below the package
    (``from ..models.clip import x`` in ``data/shards.py`` -> ``models.clip``), lazy imports included."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]  # ("lightning_fcae", "data")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1]) + (node.module or "").split(".")
            else:
                base = (node.module or "").split(".")
            names = [".".join(filter(None, base))] + [
                ".".join(filter(None, [*base, alias.name])) for alias in node.names
            ]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {n.removeprefix("lightning_fcae.") for n in names if n.startswith("lightning_fcae.")}
    return found


def test_the_import_reader_sees_relative_and_lazy_imports(tmp_path):
    module = PACKAGE / "data" / "_probe.py"
    try:
        module.write_text("def f():\n    from ..models.clip import load_clip\n")
        assert "models.clip" in imported_modules(module)
    finally:
        module.unlink()


@pytest.mark.parametrize("subpackage", sorted(FORBIDDEN))
def test_no_upward_imports(subpackage):
    upward = {
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in sorted((PACKAGE / subpackage).glob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN[subpackage]
    }
    assert not upward, sorted(upward)
