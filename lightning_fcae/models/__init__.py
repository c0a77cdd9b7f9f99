"""Plain-PyTorch models: the shared fMRI ViT encoder, fCAE and the MAE and DC-MAE baselines."""

from lightning_fcae.models.dcmae import DCMAE, ImageGuidance
from lightning_fcae.models.fcae import FCAE, FCAEOutput, LatentContextRegressor, MaskedPatchDecoder, fcae_loss
from lightning_fcae.models.mae import MAE, MAEOutput, mae_loss
from lightning_fcae.models.sizes import DecoderConfig, EncoderConfig, RegressorConfig, model_size
from lightning_fcae.models.targets import VoxelDiscretizer
from lightning_fcae.models.vit import FMRIEncoder, patchify, random_masking, unpatchify

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
