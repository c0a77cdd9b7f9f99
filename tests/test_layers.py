"""The package shows its architecture: one folder per part, each importing only the parts below it.

Bottom to top (:data:`LAYERS`); :data:`ALLOWED` says which folders each may import, and every name there
lies in a lower layer, so there is no cycle and no arrow back up::

    cli/                            the command line: console scripts, LightningCLI, one module per command
    runs/                           experiments: plans, the pipeline (split by task), its preflight
    stages/  stand_ins/  report/    training (LightningModules), the shipped stand-ins, a run's report
    inference/                      fMRI -> images with trained models (sampling, the diffusers pipeline)
    data/                           the dataset format and its DataModule (knows nothing of models)
    models/  metrics/               plain nn.Modules and their loaders; scores
    files/  model_configs/          plumbing (crash-safe writes, hashes); open_clip configs (package data)

A file imports nothing of the package outside its folder and that folder's ALLOWED, at the top or in a
function (lazy imports included); the package root holds only ``__init__.py`` and ``__main__.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_fcae"
# bottom to top: a folder may import only folders of lower layers (those ALLOWED names), never its own
# layer's others
LAYERS = [
    {"files", "model_configs"},
    {"models", "metrics"},
    {"data"},
    {"inference"},
    {"stages", "stand_ins", "report"},
    {"runs"},
    {"cli"},
]
# each folder -> what of the package, besides itself, it may import (the first name below lightning_fcae)
ALLOWED = {
    "files": set(),
    "model_configs": set(),
    "models": {"files"},
    "metrics": set(),
    "data": {"files", "metrics", "__version__"},  # metrics: the ridge of its SNR check
    "inference": {"files", "models", "metrics", "data"},
    "stages": {"files", "models", "metrics", "data", "inference", "__version__"},  # stage 3 samples
    "stand_ins": {"files", "models", "metrics", "data", "inference"},  # the checks sample the LDM
    "report": {"files"},  # reads a run folder's files, never its models
    "runs": {"files", "models", "metrics", "data", "inference", "stages", "stand_ins"},
    "cli": {"files", "models", "metrics", "data", "inference", "stages", "stand_ins", "report", "runs"},
}
ROOT_MODULES = {"__init__.py", "__main__.py"}


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


def test_the_order_is_whole_and_points_down():
    """Every folder of the package has its place and its list; each list names lower layers only."""
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    layer = {name: k for k, names in enumerate(LAYERS) for name in names}
    assert folders == set(ALLOWED) == set(layer)
    for folder, allowed in ALLOWED.items():
        assert all(layer[name] < layer[folder] for name in allowed - {"__version__"}), folder


def test_the_root_holds_the_folders_only():
    """Every module lives in the folder of its part; the root keeps the package's own entry points."""
    assert {p.name for p in PACKAGE.glob("*.py")} == ROOT_MODULES
    assert imported_modules(PACKAGE / "__main__.py") <= {"cli", "cli.main"}


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_folder_says_what_it_is_for(folder):
    """Its ``__init__.py`` opens with a docstring (what the folder is for and what it may import)."""
    assert ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())), folder
