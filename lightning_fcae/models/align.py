"""Stage 2 model: the stage-1 encoder (+ regressor) mapped onto CLIP's image-token grid.

The paper aligns ``cat(Z_v, Z_m)`` with CLIP image features ``cat(I_v, I_m)`` but does not say how
fMRI patches (983 for subject 1) correspond to CLIP tokens (50 for ViT-B/32): there is no spatial
correspondence between cortex patches and image patches. ``TokenMapper`` learns it:

    Z = scatter(Z_v, Z_m) in patch order        b n d     (visible latents from the encoder,
                                                           masked ones from the regressor)
    tokens = proj(token_map(norm(Z)))           b t D     token_map: Linear over the token axis
                                                           (MinD-Vis's 1x1 conv "channel mapper"),
                                                           proj: Linear d -> D

Token ``t`` is aligned with CLIP token ``t`` (``I_v`` and ``I_m`` together are all of CLIP's tokens;
the mask is chosen on the fMRI side, where it exists in stage 1). Token 0 lands on CLIP's pooled
image embedding, which lives in CLIP's joint image-text space: it is the fMRI embedding used for the
text contrastive loss and for n-way identification.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .fcae import FCAE, LatentContextRegressor
from .mae import MAE
from .sizes import EncoderConfig, RegressorConfig
from .vit import FMRIEncoder, random_masking


class TokenMapper(nn.Module):
    """``[b, n, d]`` fMRI patch latents -> ``[b, t, D]`` tokens on CLIP's grid.

    ``token_map`` mixes patches with one weight per (patch, token), shared by every feature: a token
    can only be a weighted average of patch latents seen through one projection. The fMRI embedding
    (token 0) also gets an ``embed_rank``-wide readout of every patch, flattened: a patch-specific
    linear map, as a ridge decoder from voxels has (0 turns it off: the MinD-Vis channel mapper alone).
    """

    def __init__(self, num_patches: int, fmri_dim: int, clip_tokens: int, clip_dim: int, embed_rank: int = 8):
        super().__init__()
        self.norm = nn.LayerNorm(fmri_dim)
        self.token_map = nn.Linear(num_patches, clip_tokens)
        self.proj = nn.Linear(fmri_dim, clip_dim)
        self.embed_rank = embed_rank
        if embed_rank:
            self.embed_reduce = nn.Linear(fmri_dim, embed_rank)
            self.embed_head = nn.Linear(num_patches * embed_rank, clip_dim)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        z = self.norm(latents)  # b n d
        mixed = self.token_map(rearrange(z, "b n d -> b d n"))  # b d t
        tokens = self.proj(rearrange(mixed, "b d t -> b t d"))  # b t D
        if not self.embed_rank:
            return tokens
        readout = self.embed_head(rearrange(self.embed_reduce(z), "b n r -> b (n r)"))  # b D
        return torch.cat([tokens[:, :1] + readout[:, None], tokens[:, 1:]], dim=1)


class FMRIAligner(nn.Module):
    """Encoder (+ regressor) + TokenMapper. ``forward(x, mask_ratio) -> [b, t, D]``.

    With a regressor (fCAE) and ``mask_ratio > 0`` the encoder sees only the visible patches and the
    regressor fills in the masked latents, as in the paper's stage 2. An MAE encoder has no regressor,
    so it always encodes every patch. Evaluation uses ``mask_ratio=0``: all patches visible.
    """

    def __init__(
        self,
        encoder: FMRIEncoder,
        regressor: LatentContextRegressor | None,
        clip_tokens: int,
        clip_dim: int,
        embed_rank: int = 8,
    ):
        super().__init__()
        self.encoder, self.regressor = encoder, regressor
        self.mapper_args = {"clip_tokens": clip_tokens, "clip_dim": clip_dim, "embed_rank": embed_rank}
        self.mapper = TokenMapper(encoder.num_patches, encoder.embed_dim, clip_tokens, clip_dim, embed_rank)

    @property
    def model_args(self) -> dict:
        """What rebuilds this aligner (models/factory.py): its parts' arguments and the token grid."""
        regressor = None if self.regressor is None else self.regressor.model_args
        return {"encoder": self.encoder.model_args, "regressor": regressor, **self.mapper_args}

    @classmethod
    def from_model_args(cls, args: dict) -> FMRIAligner:
        """A randomly initialised aligner from :attr:`model_args`."""
        encoder = FMRIEncoder(args["encoder"]["num_voxels"], EncoderConfig(**args["encoder"]["cfg"]))
        regressor = None
        if args["regressor"] is not None:
            reg = args["regressor"]
            config = RegressorConfig(**reg["cfg"])
            regressor = LatentContextRegressor(
                reg["num_patches"], reg["dim"], config, reg["mlp_ratio"], False
            )
        return cls(encoder, regressor, args["clip_tokens"], args["clip_dim"], args["embed_rank"])

    @classmethod
    def from_pretrained(
        cls, model: FCAE | MAE, clip_tokens: int, clip_dim: int, embed_rank: int = 8
    ) -> FMRIAligner:
        """Keep the stage-1 encoder (and fCAE regressor); drop the decoder."""
        return cls(model.encoder, getattr(model, "regressor", None), clip_tokens, clip_dim, embed_rank)

    def latents(self, x: torch.Tensor, mask_ratio: float = 0.0, generator=None) -> torch.Tensor:
        """Patch latents in patch order ``[b, n, d]``."""
        if self.regressor is None or mask_ratio <= 0:
            return self.encoder(x)[:, 1:]
        ids_keep, ids_mask, _ = random_masking(
            x.shape[0], self.encoder.num_patches, mask_ratio, generator, x.device
        )
        z_v = self.encoder(x, ids_keep)  # b 1+n_keep d
        z_m = self.regressor(z_v, ids_mask)  # b n_mask d
        latents = torch.empty(
            x.shape[0], self.encoder.num_patches, z_v.shape[-1], dtype=z_m.dtype, device=x.device
        )
        latents.scatter_(1, ids_keep[..., None].expand(-1, -1, z_v.shape[-1]), z_v[:, 1:].to(z_m.dtype))
        latents.scatter_(1, ids_mask[..., None].expand(-1, -1, z_m.shape[-1]), z_m)
        return latents

    def forward(self, x: torch.Tensor, mask_ratio: float = 0.0, generator=None) -> torch.Tensor:
        return self.mapper(self.latents(x, mask_ratio, generator))

    @staticmethod
    def embedding(tokens: torch.Tensor) -> torch.Tensor:
        """The fMRI image embedding in CLIP space: token 0, L2-normalised ``[b, D]``."""
        return F.normalize(tokens[:, 0].float(), dim=-1)


def token_cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Paper eq. 3: mean over tokens and samples of ``1 - cos(y, y_hat)`` (float32 under autocast)."""
    return (1 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()
