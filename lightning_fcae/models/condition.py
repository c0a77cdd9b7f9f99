"""The LDM's condition encoder: CLIP-space features -> the UNet's cross-attention context and time input.

The synthetic benchmark's stand-in LDM is pretrained on CLIP (stand-in) features, and stage 3 feeds it
the fMRI encoder's prediction of those same features (stage 2 aligns the encoder to them). Both go
through this module, so the condition stage 3 starts from is one the UNet already understands::

    image tokens  b T D  -> normalise(tokens - mean) * sqrt(D) -> Linear D -> C, + position   b T C
    text          b D    -> normalise(text - mean)   * sqrt(D) -> Linear D -> C, + position   b 1 C
    context = cat(text slot, image slots)                                                    b 1+T C
    pooled  = normalised image token 0                                                       b D

``pooled`` is what the UNet's ``class_embedding`` (diffusers' ``class_embed_type="projection"``) adds
to the time embedding: the paper's second conditioning path. Each slot has a learned null ("absent")
value, used for classifier-free guidance and for the slot a caller does not fill.

Why centre and normalise: stage 2 trains the fMRI tokens with a cosine loss against the *centred*
CLIP tokens (the training-set mean removed), so only their direction is learned; normalising here
makes a predicted direction and a real CLIP feature the same kind of input. The means are buffers,
computed once from the LDM's training split (:meth:`set_means`) and saved with the weights.

A diffusers ``ModelMixin``: ``save_pretrained`` / ``from_pretrained`` write and read it as the
``condition/`` folder of an LDM directory, beside ``vqvae/``, ``unet/`` and ``scheduler/``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class ClipCondition(ModelMixin, ConfigMixin):
    """CLIP image tokens ``[b, T, D]`` and/or a text embedding ``[b, D]`` -> ``context [b, 1+T, C]``,
    ``pooled [b, D]``.

    Args:
        clip_tokens: T, the CLIP image tokens (pooled + patches; ViT-B-32: 50).
        clip_dim: D, CLIP's joint embedding width (512).
        context_dim: C, the UNet's ``cross_attention_dim``.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, clip_tokens: int, clip_dim: int, context_dim: int):
        super().__init__()
        self.image_proj = nn.Linear(clip_dim, context_dim)
        self.text_proj = nn.Linear(clip_dim, context_dim)
        self.image_pos = nn.Parameter(torch.randn(clip_tokens, context_dim) * 0.02)
        self.text_pos = nn.Parameter(torch.randn(1, context_dim) * 0.02)
        self.null_image = nn.Parameter(torch.randn(clip_tokens, context_dim) * 0.02)
        self.null_text = nn.Parameter(torch.randn(1, context_dim) * 0.02)
        self.null_pooled = nn.Parameter(torch.zeros(clip_dim))
        self.register_buffer("image_mean", torch.zeros(clip_tokens, clip_dim))
        self.register_buffer("text_mean", torch.zeros(clip_dim))

    @torch.no_grad()
    def set_means(self, image_tokens: torch.Tensor, text: torch.Tensor) -> None:
        """The training split's mean image tokens ``[T, D]`` and mean text embedding ``[D]``."""
        self.image_mean.copy_(image_tokens)
        self.text_mean.copy_(text)

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        """Unit direction scaled to unit variance per feature: ``normalise(x) * sqrt(D)``."""
        return F.normalize(x.float(), dim=-1) * math.sqrt(x.shape[-1])

    def forward(
        self,
        image_tokens: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        keep_image: torch.Tensor | None = None,
        keep_text: torch.Tensor | None = None,
        centred: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context ``[b, 1+T, C]`` and pooled ``[b, D]``.

        ``image_tokens [b, T, D]`` / ``text [b, D]``: CLIP features, raw (the means are subtracted
        here) or already ``centred`` (stage 2's fMRI predictions). A missing input, or a sample whose
        ``keep_*`` (bool ``[b]``) is False, gets that slot's null value.
        """
        reference = image_tokens if image_tokens is not None else text
        if reference is None:
            raise ValueError("ClipCondition needs image_tokens or text (null() is the null condition)")
        batch, device = reference.shape[0], reference.device
        dtype = self.image_proj.weight.dtype
        null_text, null_image, null_pooled = self._slot_nulls(batch)
        if text is not None:
            text = text if centred else text - self.text_mean
            text_ctx = self.text_proj(self._unit(text).to(dtype))[:, None] + self.text_pos  # b 1 C
            if keep_text is not None:
                text_ctx = torch.where(keep_text.to(device)[:, None, None], text_ctx, null_text)
        else:
            text_ctx = null_text
        if image_tokens is not None:
            tokens = image_tokens if centred else image_tokens - self.image_mean
            unit = self._unit(tokens).to(dtype)  # b T D
            image_ctx = self.image_proj(unit) + self.image_pos  # b T C
            pooled = unit[:, 0]  # b D
            if keep_image is not None:
                keep = keep_image.to(device)
                image_ctx = torch.where(keep[:, None, None], image_ctx, null_image)
                pooled = torch.where(keep[:, None], pooled, null_pooled)
        else:
            image_ctx, pooled = null_image, null_pooled
        return torch.cat([text_ctx, image_ctx], dim=1), pooled

    def _slot_nulls(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The null text slot ``[b, 1, C]``, image slots ``[b, T, C]`` and pooled ``[b, D]``."""
        return (
            self.null_text.expand(batch, -1, -1),
            self.null_image.expand(batch, -1, -1),
            self.null_pooled.expand(batch, -1),
        )

    def null(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Context ``[b, 1+T, C]`` and pooled ``[b, D]`` of "no condition" (classifier-free guidance)."""
        text, image, pooled = self._slot_nulls(batch)
        return torch.cat([text, image], dim=1), pooled
