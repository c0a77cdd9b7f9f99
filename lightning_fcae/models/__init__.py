"""Plain-PyTorch models and their loaders: the shared fMRI ViT encoder, fCAE and the MAE and DC-MAE
baselines (exported here), the aligner, CLIP, the LDM and its condition, and the factory that rebuilds any
model from any stage's checkpoint (:mod:`.factory`).

At the bottom beside ``metrics/``: of the package it may import only ``files/`` (an exported LDM is
written atomically), so that a model loads without any stage or command.
"""

import logging

from lightning_fcae.models.dcmae import DCMAE, ImageGuidance
from lightning_fcae.models.fcae import FCAE, FCAEOutput, LatentContextRegressor, MaskedPatchDecoder, fcae_loss
from lightning_fcae.models.mae import MAE, MAEOutput, mae_loss
from lightning_fcae.models.sizes import DecoderConfig, EncoderConfig, RegressorConfig, model_size
from lightning_fcae.models.targets import VoxelDiscretizer
from lightning_fcae.models.vit import FMRIEncoder, patchify, random_masking, unpatchify


class _NoAccelerateNotice(logging.Filter):
    """Drops diffusers' "Cannot initialize model with low cpu memory usage because `accelerate` was not
    found" notice, printed on every ``from_pretrained``: accelerate would save nothing here. Measured on
    the paper's LDM shape (cin256 vq-f4 + UNet, 1.7 GB of safetensors, diffusers 0.42, CPU): without it,
    diffusers still builds the model under ``no_init_weights`` (no random init) and loads in 0.1 s, and
    the process peaks at +1.8 GB, the weights themselves; accelerate's empty-weights init only skips
    allocations that the weights fill anyway. So the project does not depend on it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`accelerate` was not found" not in record.getMessage()


# printed by a model's from_pretrained and again by a pipeline's (an exported FMRIReconstructionPipeline)
for _name in ("diffusers.models.modeling_utils", "diffusers.pipelines.pipeline_utils"):
    logging.getLogger(_name).addFilter(_NoAccelerateNotice())

__all__ = [
    "DCMAE",
    "FCAE",
    "MAE",
    "DecoderConfig",
    "EncoderConfig",
    "FCAEOutput",
    "FMRIEncoder",
    "ImageGuidance",
    "LatentContextRegressor",
    "MAEOutput",
    "MaskedPatchDecoder",
    "RegressorConfig",
    "VoxelDiscretizer",
    "fcae_loss",
    "mae_loss",
    "model_size",
    "patchify",
    "random_masking",
    "unpatchify",
]
