"""Latent diffusion parts for stage 3: diffusers components, the fMRI condition, and the trainable set.

The paper (section 2.2) fine-tunes a pretrained LDM: a VQ autoencoder ("f4": 256 px images -> 64x64x3
latents) and a UNet that reads the fMRI encoder's output in two places (eq. 4):

* cross-attention: ``encoder_hidden_states [b, L, C]`` from :class:`~lightning_fcae.models.condition.ClipCondition`;
* the time embedding: a pooled condition ``[b, P]`` goes through the UNet's ``class_embedding``
  (diffusers' ``class_embed_type="projection"``, a Linear-SiLU-Linear) and is *added* to the timestep
  embedding, as MinD-Vis's ``time_embed_condition`` does.

Pretrained LDMs such as CompVis cin256-v2 have no such projection, so :func:`add_time_conditioning`
inserts one whose last layer is zero-initialised: fine-tuning starts from exactly the pretrained model's
behaviour. The synthetic benchmark's stand-in LDM is pretrained with both paths already, on CLIP
(stand-in) features.

Models are stored as diffusers directories: ``<dir>/vqvae`` (VQModel), ``<dir>/unet``
(UNet2DConditionModel), ``<dir>/scheduler`` (DDPMScheduler) and, for an LDM pretrained on CLIP features,
``<dir>/condition`` (:class:`ClipCondition`); see :func:`load_ldm`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel, VQModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import TimestepEmbedding
from torch import nn

from ..files.atomic import save_pretrained
from .checkpoints import check_weights_file, export_fix
from .condition import ClipCondition

# The noise schedule of the CompVis LDMs (cin256-v2, the model MinD-Vis fine-tunes): 1000 training steps,
# LDM's "linear" schedule (linear in sqrt(beta), i.e. diffusers' scaled_linear) from 0.0015 to 0.0195.
# steps_offset=1 makes DDIM pick the same timesteps as the CompVis DDIM/PLMS samplers.
LDM_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_schedule="scaled_linear",
    beta_start=0.0015,
    beta_end=0.0195,
    clip_sample=False,
    prediction_type="epsilon",
    steps_offset=1,
)

# Named LDM shapes. GroupNorm uses 32 groups everywhere, as CompVis does, so that every shape here is
# also expressible as a CompVis config. diffusers reads ``attention_head_dim`` as the number of heads for
# this model (its historical naming), which matches CompVis ``num_heads``.
LDMConfigName = Literal["tiny", "demo", "small", "cin256-f4"]
LDM_CONFIGS: dict[str, dict[str, dict]] = {
    # unit tests: 16 px images -> 4x4x3 latents
    "tiny": {
        "vq": dict(block_out_channels=(32, 32, 32), layers_per_block=1, num_vq_embeddings=64, sample_size=16),
        "unet": dict(
            sample_size=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=4,
            cross_attention_dim=32,
        ),
        "scheduler": LDM_SCHEDULER,
    },
    # the synthetic CPU demo: 64 px images -> 16x16x3 latents
    "small": {
        "vq": dict(
            block_out_channels=(32, 64, 64), layers_per_block=1, num_vq_embeddings=512, sample_size=64
        ),
        "unet": dict(
            sample_size=16,
            block_out_channels=(64, 128, 256),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=4,
            cross_attention_dim=256,
        ),
        "scheduler": LDM_SCHEDULER,
    },
    # the 15-minute CPU pipeline (make demo): 32 px images -> 8x8x3 latents, a quarter of small's cost
    "demo": {
        "vq": dict(
            block_out_channels=(32, 64, 64), layers_per_block=1, num_vq_embeddings=256, sample_size=32
        ),
        "unet": dict(
            sample_size=8,
            block_out_channels=(64, 128),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=4,
            cross_attention_dim=128,
        ),
        "scheduler": LDM_SCHEDULER,
    },
    # CompVis configs/latent-diffusion/cin256-v2.yaml (the paper's LDM shape: vq-f4, 256 px -> 64x64x3).
    # For reference and from-scratch runs; real weights come from `lightning-fcae convert-ldm`.
    "cin256-f4": {
        "vq": dict(
            block_out_channels=(128, 256, 512), layers_per_block=2, num_vq_embeddings=8192, sample_size=256
        ),
        "unet": dict(
            sample_size=64,
            block_out_channels=(192, 384, 576, 960),
            layers_per_block=2,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
            up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
            attention_head_dim=1,
            cross_attention_dim=512,
        ),
        "scheduler": LDM_SCHEDULER,
    },
}

LDM_PARTS = {"vqvae": VQModel, "unet": UNet2DConditionModel, "scheduler": DDPMScheduler}
CONDITION_PART = "condition"  # optional: only an LDM pretrained on CLIP features has one


@dataclass
class LDM:
    """The parts of a latent diffusion model; ``condition`` is None for an LDM pretrained on other
    conditions (CompVis class labels), whose fine-tuning then starts a fresh :class:`ClipCondition`."""

    vq: VQModel
    unet: UNet2DConditionModel
    scheduler: DDPMScheduler
    condition: ClipCondition | None = None


def ldm_config(name: str) -> dict[str, dict]:
    """A fresh copy of a named LDM shape (``tiny``, ``demo``, ``small``, ``cin256-f4``)."""
    if name not in LDM_CONFIGS:
        raise ValueError(f"unknown LDM config {name!r}; choose one of {sorted(LDM_CONFIGS)}")
    return copy.deepcopy(LDM_CONFIGS[name])


def build_vq(config: dict) -> VQModel:
    """A VQ autoencoder like CompVis vq-f4: one block per resolution, downsampling between them (3 blocks
    -> factor 4), 3 latent channels, and latents at unit scale (``scaling_factor`` 1, as CompVis)."""
    n = len(config["block_out_channels"])
    defaults = dict(
        in_channels=3,
        out_channels=3,
        latent_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        scaling_factor=1.0,
    )
    return VQModel(**{**defaults, **config})


def build_unet(config: dict, pooled_dim: int | None = None) -> UNet2DConditionModel:
    """A cross-attention UNet on the VQ's latents. With ``pooled_dim`` it also takes a ``[b, pooled_dim]``
    condition added to the time embedding (diffusers' ``class_embed_type="projection"``); without, see
    :func:`add_time_conditioning`."""
    config = {"in_channels": 3, "out_channels": 3, **config}
    if pooled_dim:
        config |= {"class_embed_type": "projection", "projection_class_embeddings_input_dim": pooled_dim}
    return UNet2DConditionModel(**config)


def build_ldm(name: str) -> LDM:
    """A randomly initialised LDM of a named shape."""
    config = ldm_config(name)
    return LDM(build_vq(config["vq"]), build_unet(config["unet"]), DDPMScheduler(**config["scheduler"]))


def load_ldm(path: str | Path) -> LDM:
    """An LDM from a diffusers-format directory (``vqvae/``, ``unet/``, ``scheduler/``), on CPU."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(
            f"LDM folder {root} does not exist: convert a CompVis checkpoint into it with `lightning-fcae "
            f"convert-ldm model.ckpt --config cin256-v2.yaml --out {root}` (or name the folder LDMPretrain exported)"
        )
    missing = [name for name in LDM_PARTS if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{root} is not a diffusers-format LDM (missing {', '.join(f'{m}/' for m in missing)}). Expected "
            f"{root}/vqvae (VQModel), {root}/unet (UNet2DConditionModel) and {root}/scheduler (DDPMScheduler), "
            "as written by `lightning-fcae convert-ldm` from a CompVis checkpoint or by LDMPretrain.export()."
        )
    for weights in root.glob("*/*.safetensors"):  # diffusers would not name a cut-off file
        check_weights_file(weights, export_fix(root))
    parts = {name: cls.from_pretrained(root, subfolder=name) for name, cls in LDM_PARTS.items()}
    condition = None
    if (root / CONDITION_PART).is_dir():
        condition = ClipCondition.from_pretrained(root, subfolder=CONDITION_PART)
    return LDM(parts["vqvae"], parts["unet"], parts["scheduler"], condition)


def save_ldm(ldm: LDM, path: str | Path) -> Path:
    """Write the layout :func:`load_ldm` reads, each part replaced whole (a kill mid-export leaves a part
    missing, never cut off)."""
    root = Path(path)
    for name, part in zip(LDM_PARTS, (ldm.vq, ldm.unet, ldm.scheduler)):
        save_pretrained(part, root / name)
    if ldm.condition is not None:
        save_pretrained(ldm.condition, root / CONDITION_PART)
    return root


def vq_downsampling(vq: VQModel) -> int:
    """Image side / latent side: every encoder block but the last halves the resolution."""
    return 2 ** (len(vq.config.block_out_channels) - 1)


def to_model_range(images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """``[b, 3, H, W]`` in [0, 1] -> [-1, 1], resized to ``size`` (antialiased bilinear) when given."""
    if size is not None and images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
    return images * 2 - 1


def add_time_conditioning(unet: UNet2DConditionModel, pooled_dim: int) -> UNet2DConditionModel:
    """Give ``unet`` a ``class_embedding`` that adds a ``[b, pooled_dim]`` condition to the time embedding.

    In place: a diffusers ``class_embed_type="projection"`` TimestepEmbedding is attached and recorded in
    the config (so ``save_pretrained``/``from_pretrained`` rebuild it). Its last Linear starts at zero, so
    the UNet's output is unchanged until training moves it. A UNet that already has a projection of the
    right width is returned untouched.
    """
    config = unet.config
    if config.class_embed_type == "projection" and config.projection_class_embeddings_input_dim == pooled_dim:
        return unet
    if unet.class_embedding is not None or config.addition_embed_type is not None:
        raise ValueError(
            f"the UNet already has a class/addition embedding ({config.class_embed_type}, "
            f"{config.addition_embed_type}); cannot add a projection of width {pooled_dim}"
        )
    time_embed_dim = unet.time_embedding.linear_2.out_features
    embedding = TimestepEmbedding(pooled_dim, time_embed_dim, act_fn=config.act_fn)
    nn.init.zeros_(embedding.linear_2.weight)
    nn.init.zeros_(embedding.linear_2.bias)
    unet.class_embedding = embedding.to(unet.device, unet.dtype)
    unet.register_to_config(class_embed_type="projection", projection_class_embeddings_input_dim=pooled_dim)
    return unet


def cross_attention_parameters(unet: UNet2DConditionModel) -> dict[str, nn.Parameter]:
    """The UNet's cross-attention layers: in every transformer block, ``attn2`` (to_q, to_k, to_v,
    to_out) and ``norm2``, the LayerNorm in front of it. Selected by module type, not by name: the UNet's
    ResNet blocks also have ``norm2`` layers, and those stay frozen."""
    params = {}
    for name, module in unet.named_modules():
        if isinstance(module, BasicTransformerBlock) and module.attn2 is not None:
            for part in ("norm2", "attn2"):
                for pname, param in getattr(module, part).named_parameters():
                    params[f"{name}.{part}.{pname}"] = param
    return params


def freeze_for_finetuning(unet: UNet2DConditionModel) -> list[str]:
    """Freeze the UNet except its cross-attention layers and its ``class_embedding`` (the time-embedding
    condition, new in fine-tuning). Returns the names of the parameters left trainable."""
    unet.requires_grad_(False)
    trainable = cross_attention_parameters(unet)
    if unet.class_embedding is not None:
        trainable.update({f"class_embedding.{n}": p for n, p in unet.class_embedding.named_parameters()})
    for param in trainable.values():
        param.requires_grad_(True)
    return sorted(trainable)
