"""The package's layers import downward only: ``models/`` and ``metrics/`` are the bottom (plain modules
and their loaders), ``data/`` sits beside them and knows nothing of models (a stage hands the DataModule
what it should stream); a file in them imports nothing of the package above, at the top or in a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_fcae"
# the bottom subpackages -> what of the package, besides themselves, they may import (first name below
# lightning_fcae): models/ and metrics/ nothing; data/ the ridge of metrics/ (its SNR check) and the version
ALLOWED = {
    "files": set(),
    "models": {"files"},
    "metrics": set(),
    "data": {"metrics", "files", "__version__"},
    "inference": {"files", "models", "metrics", "data"},
    "stages": {"files", "models", "metrics", "data", "inference", "__version__"},
}


def imported_modules(path: Path, package_root: Path = PACKAGE) -> set[str]:
    """The ``lightning_fcae`` modules a file imports, as dotted names below the package
    (``from ..models.clip import x`` in ``data/shards.py`` -> ``models.clip``), lazy imports included."""
    package = path.relative_to(package_root.parent).with_suffix("").parts[:-1]  # ("lightning_fcae", "data")
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
    root = tmp_path / "lightning_fcae"
    (root / "data" / "synthetic").mkdir(parents=True)
    module = root / "data" / "synthetic" / "probe.py"
    module.write_text(
        "from ..schema import x\nfrom ... import __version__\ndef f():\n    from ...models.clip import y\n"
    )
    assert imported_modules(module, root) == {
        "data.schema",
        "data.schema.x",
        "__version__",
        "models.clip",
        "models.clip.y",
    }


@pytest.mark.parametrize("subpackage", sorted(ALLOWED))
def test_no_upward_imports(subpackage):
    found = {}
    for path in sorted((PACKAGE / subpackage).rglob("*.py")):
        above = {
            name.split(".")[0]
            for name in imported_modules(path)
            if name.split(".")[0] not in ALLOWED[subpackage] | {subpackage}
        }
        if above:
            found[path.relative_to(PACKAGE).as_posix()] = above
    assert found == {}
