"""MAE baseline for fMRI (MinD-Vis SC-MBM style, after He et al. 2022).

Same FMRIEncoder as fCAE; the decoder sees the visible latents plus a shared mask token at every masked
position and regresses the voxel values of all patches; the loss counts masked patches only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lightning_fcae.models.sizes import DecoderConfig, EncoderConfig, config_dicts
from lightning_fcae.models.vit import (
    Block,
    FMRIEncoder,
    gather_tokens,
    init_vit_weights,
    patchify,
    random_masking,
    run_block,
    sincos_pos_embed_1d,
)


@dataclass
class MAEOutput:
    pred: torch.Tensor  # [b, N, p] predicted voxels for every patch
    target: torch.Tensor  # [b, N, p] patched input (per-patch normalised with norm_pix_loss)
    mask: torch.Tensor  # [b, N] 1 = masked
    ids_keep: torch.Tensor  # [b, n_keep]
    ids_mask: torch.Tensor  # [b, n_mask]


class MAE(nn.Module):
    """Masked autoencoder with parts ``encoder`` (FMRIEncoder) and a lightweight MAE decoder.

    ``norm_pix_loss`` normalises each target patch by its own mean/std (MAE's option); off by default
    because voxels are already z-scored upstream.
    """

    def __init__(
        self,
        num_voxels: int,
        encoder: EncoderConfig,
        decoder: DecoderConfig,
        norm_pix_loss: bool = False,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.model_args = {
            "num_voxels": num_voxels,
            **config_dicts(encoder=encoder, decoder=decoder),
            "norm_pix_loss": norm_pix_loss,
        }
        self.encoder = FMRIEncoder(num_voxels, encoder, grad_checkpointing)
        self.embed_dim = encoder.embed_dim
        self.patch_size = encoder.patch_size
        self.norm_pix_loss = norm_pix_loss
        self.grad_checkpointing = grad_checkpointing
        n = self.encoder.num_patches
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder.embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_1d(n, decoder.embed_dim)[None])
        self.decoder_blocks = nn.ModuleList(
            Block(decoder.embed_dim, decoder.num_heads, decoder.mlp_ratio) for _ in range(decoder.depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder.embed_dim)
        self.decoder_pred = nn.Linear(decoder.embed_dim, encoder.patch_size)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(init_vit_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """``latent [b, 1 + n_keep, d]`` (cls first) -> predictions ``[b, N, p]`` in original patch order."""
        x = self.decoder_embed(latent)
        b, n_keep = x.shape[0], x.shape[1] - 1
        masked = self.mask_token.expand(b, ids_restore.shape[1] - n_keep, -1)
        patches = gather_tokens(torch.cat([x[:, 1:], masked], dim=1), ids_restore)  # unshuffle: b N dd
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = run_block(blk, x, checkpointing=self.grad_checkpointing)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(
        self, x: torch.Tensor, mask_ratio: float = 0.75, generator: torch.Generator | None = None
    ) -> MAEOutput:
        n = self.encoder.num_patches
        ids_keep, ids_mask, ids_restore = random_masking(x.shape[0], n, mask_ratio, generator, x.device)
        pred = self.decode(self.encoder(x, ids_keep), ids_restore)
        return self.output(x, pred, ids_keep, ids_mask)

    def output(
        self, x: torch.Tensor, pred: torch.Tensor, ids_keep: torch.Tensor, ids_mask: torch.Tensor
    ) -> MAEOutput:
        """Wrap the predictions ``[b, N, p]`` of input ``x [b, V]`` with their targets and mask."""
        target = patchify(x, self.patch_size)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        mask = torch.zeros(target.shape[:2], device=x.device, dtype=x.dtype).scatter_(1, ids_mask, 1.0)
        return MAEOutput(pred, target, mask, ids_keep, ids_mask)

    def parameter_counts(self) -> dict[str, int]:
        enc = sum(p.numel() for p in self.encoder.parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"encoder": enc, "decoder": total - enc, "total": total}


def mae_loss(out: MAEOutput) -> dict[str, torch.Tensor]:
    """Mean squared error per patch, averaged over masked patches only (float32 for bf16 autocast)."""
    per_patch = (out.pred.float() - out.target.float()).pow(2).mean(dim=-1)  # b N
    mask = out.mask.float()
    rec = (per_patch * mask).sum() / mask.sum()
    return {"loss": rec, "rec": rec}
