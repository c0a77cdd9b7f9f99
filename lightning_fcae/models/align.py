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

Beyond the paper, an aligner may hold a per-subject linear path from voxels (:class:`VoxelLinearMap`,
``linear_path: ridge`` in stage 2): its tokens and the deep ones are summed, and the deep path's last
layers start at zero, so an aligner whose linear path was just set to the ridge predicts what the ridge
predicts and trains from there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .fcae import FCAE, LatentContextRegressor
from .linear_path import VoxelLinearMap
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

    @torch.no_grad()
    def zero_output(self) -> None:
        """Output layers to zero: every token is 0 until training moves them (ControlNet's zero
        convolution), while the gradient still reaches them (their inputs are not zero)."""
        for layer in (self.proj, getattr(self, "embed_head", None)):
            if layer is not None:
                layer.weight.zero_()
                layer.bias.zero_()

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        z = self.norm(latents)  # b n d
        mixed = self.token_map(rearrange(z, "b n d -> b d n"))  # b d t
        tokens = self.proj(rearrange(mixed, "b d t -> b t d"))  # b t D
        if not self.embed_rank:
            return tokens
        readout = self.embed_head(rearrange(self.embed_reduce(z), "b n r -> b (n r)"))  # b D
        return torch.cat([tokens[:, :1] + readout[:, None], tokens[:, 1:]], dim=1)


class FMRIAligner(nn.Module):
    """Encoder (+ regressor) + TokenMapper (+ linear path). ``forward(x, mask_ratio, subject=) -> [b, t, D]``.

    With a regressor (fCAE) and ``mask_ratio > 0`` the encoder sees only the visible patches and the
    regressor fills in the masked latents, as in the paper's stage 2. An MAE encoder has no regressor,
    so it always encodes every patch. Evaluation uses ``mask_ratio=0``: all patches visible. With a
    linear path the caller names each row's subject (indices into ``linear.subjects``).
    """

    def __init__(
        self,
        encoder: FMRIEncoder,
        regressor: LatentContextRegressor | None,
        clip_tokens: int,
        clip_dim: int,
        embed_rank: int = 8,
        linear: VoxelLinearMap | None = None,
    ):
        super().__init__()
        self.encoder, self.regressor = encoder, regressor
        self.mapper_args = {"clip_tokens": clip_tokens, "clip_dim": clip_dim, "embed_rank": embed_rank}
        self.mapper = TokenMapper(encoder.num_patches, encoder.embed_dim, clip_tokens, clip_dim, embed_rank)
        self.linear = linear

    def add_linear_path(self, subjects: list[str], rank: int) -> VoxelLinearMap:
        """Attach a zero linear path for ``subjects`` and zero the deep path's output layers: the aligner
        then predicts whatever the linear path is set to (:meth:`VoxelLinearMap.set_subject`)."""
        args = self.mapper_args
        voxels = self.encoder.num_patches * self.encoder.patch_size
        self.linear = VoxelLinearMap(subjects, voxels, rank, [args["clip_tokens"], args["clip_dim"]])
        self.mapper.zero_output()
        return self.linear

    @property
    def model_args(self) -> dict:
        """What rebuilds this aligner (models/factory.py): its parts' arguments and the token grid."""
        regressor = None if self.regressor is None else self.regressor.model_args
        linear = None if self.linear is None else self.linear.model_args
        return {
            "encoder": self.encoder.model_args,
            "regressor": regressor,
            **self.mapper_args,
            "linear": linear,
        }

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
        linear = VoxelLinearMap(**args["linear"]) if args.get("linear") else None
        return cls(encoder, regressor, args["clip_tokens"], args["clip_dim"], args["embed_rank"], linear)

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

    def forward(
        self, x: torch.Tensor, mask_ratio: float = 0.0, generator=None, subject: torch.Tensor | None = None
    ) -> torch.Tensor:
        tokens = self.mapper(self.latents(x, mask_ratio, generator))  # b T D
        if self.linear is None:
            return tokens
        if subject is None:
            raise ValueError(
                f"this aligner has a per-subject linear path (subjects {self.linear.subjects}): pass each "
                "row's subject"
            )
        return tokens + self.linear(x, subject)

    @staticmethod
    def embedding(tokens: torch.Tensor) -> torch.Tensor:
        """The fMRI image embedding in CLIP space: token 0, L2-normalised ``[b, D]``."""
        return F.normalize(tokens[:, 0].float(), dim=-1)


def token_cosine_loss(
    pred: torch.Tensor, target: torch.Tensor, embed_weight: float | None = 0.5
) -> torch.Tensor:
    """Paper eq. 3, ``1 - cos(y, y_hat)`` per token and sample (float32 under autocast), with token 0 (the
    fMRI embedding) weighing ``embed_weight`` and the patch tokens sharing the rest; None: every token
    alike, the plain mean (token 0 then weighs 1/T: 2% of the term with ViT-B/32's 50 tokens, so the
    embedding that identification, the text term and stage 3's time embedding read barely trains when the
    patch tokens are hard to predict; docs/method.md)."""
    distance = 1 - F.cosine_similarity(pred.float(), target.float(), dim=-1)  # b T
    if embed_weight is None or distance.shape[1] == 1:
        return distance.mean()
    return embed_weight * distance[:, 0].mean() + (1 - embed_weight) * distance[:, 1:].mean()


def soft_clip_loss(pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """MindEye's soft-CLIP loss: cross-entropy of ``scale * pred @ target.T`` (both ``[b, D]``, unit) against
    the softmax of CLIP's own ``scale * target @ target.T``, both directions averaged; a distractor as
    similar to the target as the target itself is not pushed away as if it were unrelated."""
    pred, target = pred.float(), target.float()
    soft = (scale * target @ target.T).softmax(-1)  # b b
    logits = scale * pred @ target.T
    return (
        -((soft * logits.log_softmax(-1)).sum(-1).mean() + (soft * logits.T.log_softmax(-1)).sum(-1).mean())
        / 2
    )
