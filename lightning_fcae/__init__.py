"""lightning-fcae: fMRI -> image reconstruction (fCAE pretraining, CLIP alignment, latent diffusion).

The package is one folder per part (``tests/test_layers.py`` holds their order): ``files/`` (plumbing),
``models/`` and ``metrics/``, ``data/``, ``inference/`` (fMRI -> images), ``stages/`` (training),
``stand_ins/``, ``report/``, ``runs/`` (experiments) and ``cli/`` (the command line).
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys

__version__ = "0.1.0"

# the Python API, imported on first use: `import lightning_fcae` (and the CLI's --help) stays light
_API = {
    "FMRIReconstructionPipeline": "lightning_fcae.inference.reconstruction_pipeline",
    "load_fmri_encoder": "lightning_fcae.models.factory",
}
__all__ = list(_API)

# modules that moved when the package root was grouped into folders (issue 24): a saved run.yaml or
# config.yaml, or a script, may still name the old path
MOVED = {
    "lightning_fcae.atomic": "lightning_fcae.files.atomic",
    "lightning_fcae.checkpoint_io": "lightning_fcae.files.checkpoint_io",
    "lightning_fcae.sampling": "lightning_fcae.inference.sampling",
    "lightning_fcae.reconstruction_pipeline": "lightning_fcae.inference.reconstruction_pipeline",
    "lightning_fcae.reconstruct": "lightning_fcae.inference.reconstruct",
    "lightning_fcae.parsers": "lightning_fcae.inference.parser and lightning_fcae.cli.convert_ldm",
    "lightning_fcae.clip_features": "lightning_fcae.stages.clip_features",
    "lightning_fcae.loggers": "lightning_fcae.stages.loggers",
    "lightning_fcae.plan": "lightning_fcae.runs.plan",
    "lightning_fcae.progress": "lightning_fcae.runs.progress",
    "lightning_fcae.run_lock": "lightning_fcae.runs.run_lock",
    "lightning_fcae.yardstick": "lightning_fcae.runs.yardstick",
    "lightning_fcae.pipeline": "lightning_fcae.runs.pipeline",
    "lightning_fcae.preflight": "lightning_fcae.runs.preflight",
    "lightning_fcae.lightning_cli": "lightning_fcae.cli.lightning_cli",
    "lightning_fcae.convert_ldm": "lightning_fcae.cli.convert_ldm",
}


def _moved(module: str) -> str:
    return f"{module} moved to {MOVED[module]}: edit the class_path in your config (or the import)"


class _MovedModules(importlib.abc.MetaPathFinder):
    """Importing a module of :data:`MOVED` fails with its new path, not a bare "No module named": the
    first in ``sys.meta_path``, so that no other finder (an editable install's) offers a stale copy."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            raise ModuleNotFoundError(_moved(fullname), name=fullname)
        return None


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    if f"{__name__}.{name}" in MOVED:  # jsonargparse, failing to import a module, reads it as an attribute
        raise AttributeError(_moved(f"{__name__}.{name}"))
    raise AttributeError(f"module 'lightning_fcae' has no attribute {name!r}")
