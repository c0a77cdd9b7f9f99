"""lightning-fcae: fMRI -> image reconstruction (fCAE pretraining, CLIP alignment, latent diffusion)."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# the Python API, imported on first use: `import lightning_fcae` (and the CLI's --help) stays light
_API = {
    "FMRIReconstructionPipeline": "lightning_fcae.inference.reconstruction_pipeline",
    "load_fmri_encoder": "lightning_fcae.models.factory",
}
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'lightning_fcae' has no attribute {name!r}")
