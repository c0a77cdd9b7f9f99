"""Named model sizes.

The configs are plain dataclasses so that jsonargparse / LightningCLI can expose them as typed init
arguments (``--model.encoder.depth 12``). Defaults are the ``base`` size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class EncoderConfig:
    """ViT encoder over 1-D voxel patches. ``patch_size`` voxels form one token."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16


@dataclass
class RegressorConfig:
    """fCAE latent context regressor. Width and mlp ratio follow the encoder: it predicts encoder latents."""

    depth: int = 2
    num_heads: int = 12


@dataclass
class DecoderConfig:
    """Pretraining decoder (fCAE masked-patch decoder or MAE decoder); thrown away after pretraining."""

    embed_dim: int = 384
    depth: int = 4
    num_heads: int = 8
    mlp_ratio: float = 4.0


_SIZES: dict[str, tuple[EncoderConfig, RegressorConfig, DecoderConfig]] = {
    # For tests: a forward/backward takes milliseconds on a CPU.
    "tiny": (EncoderConfig(64, 2, 4, 2.0), RegressorConfig(1, 4), DecoderConfig(32, 1, 2, 2.0)),
    # For the CPU demo.
    "small": (EncoderConfig(256, 6, 8, 4.0), RegressorConfig(2, 8), DecoderConfig(128, 2, 4, 4.0)),
    # ViT-B. The paper reports 102M parameters for encoder + regressor; with a depth-2 regressor this
    # lands at ~99M at 15728 voxels (depth 3 would give ~106M).
    "base": (EncoderConfig(768, 12, 12, 4.0), RegressorConfig(2, 12), DecoderConfig(384, 4, 8, 4.0)),
    # The MinD-Vis SC-MBM size (ViT-L width, mlp ratio 1.0, decoder 512/8/16).
    "large": (EncoderConfig(1024, 24, 16, 1.0), RegressorConfig(4, 16), DecoderConfig(512, 8, 16, 1.0)),
}


def model_size(name: str) -> tuple[EncoderConfig, RegressorConfig, DecoderConfig]:
    """Fresh config objects for a named size: ``tiny``, ``small``, ``base`` or ``large``."""
    if name not in _SIZES:
        raise ValueError(f"unknown model size {name!r}; choose one of {sorted(_SIZES)}")
    enc, reg, dec = _SIZES[name]
    return EncoderConfig(**vars(enc)), RegressorConfig(**vars(reg)), DecoderConfig(**vars(dec))


CONFIG_TYPES = {"encoder": EncoderConfig, "regressor": RegressorConfig, "decoder": DecoderConfig}


def config_dicts(**configs: EncoderConfig | RegressorConfig | DecoderConfig) -> dict[str, dict]:
    """Size configs as plain dicts: what a checkpoint records (``torch.load(weights_only=True)`` reads
    plain containers only)."""
    return {name: asdict(cfg) for name, cfg in configs.items()}


def config_objects(args: dict) -> dict:
    """``args`` with its ``encoder`` / ``regressor`` / ``decoder`` dicts turned back into config objects."""
    return {
        k: CONFIG_TYPES[k](**v) if k in CONFIG_TYPES and isinstance(v, dict) else v for k, v in args.items()
    }
