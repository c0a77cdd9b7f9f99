"""fCAE: a Context Autoencoder (Chen et al., IJCV 2024) for 1-D fMRI patches.

CAE separates *representation learning* from *reconstruction*:

- the encoder sees only the visible patches and produces ``Z_v``;
- the latent context regressor predicts the latents ``Z_m`` of the masked patches from ``Z_v``;
- ``Z_m`` is aligned with what the encoder itself produces when it is run on the masked patches;
- the decoder reconstructs the masked patches from ``Z_m`` alone.

Because the decoder never sees ``Z_v``, the encoder cannot hand reconstruction work to the decoder (as
it can in MAE); everything the decoder needs must pass through the encoder's latent space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lightning_fcae.models.sizes import DecoderConfig, EncoderConfig, RegressorConfig, config_dicts
from lightning_fcae.models.targets import VoxelDiscretizer
from lightning_fcae.models.vit import (
    Block,
    CrossBlock,
    FMRIEncoder,
    gather_tokens,
    init_vit_weights,
    patchify,
    random_masking,
    run_block,
    sincos_pos_embed_1d,
    unpatchify,
)


class LatentContextRegressor(nn.Module):
    """Predicts masked-patch latents from visible ones: ``forward(z_v, ids_mask) -> z_m [b, n_mask, d]``.

    Queries start as one learned mask token plus the fixed position embedding of each masked patch. Each
    CrossBlock lets the queries attend to ``cat(z_v, queries)`` (as in CAE); only the queries are updated,
    so the visible latents stay exactly the encoder's output. ``z_v`` keeps the encoder's cls token: it is
    a summary of the visible context and costs one extra key. Positions of visible patches are not re-added;
    the encoder put them into ``z_v`` at its input.
    """

    def __init__(
        self, num_patches: int, dim: int, cfg: RegressorConfig, mlp_ratio: float, grad_checkpointing: bool
    ):
        super().__init__()
        self.model_args = {"num_patches": num_patches, "dim": dim, "cfg": asdict(cfg), "mlp_ratio": mlp_ratio}
        self.grad_checkpointing = grad_checkpointing
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed_1d(num_patches, dim, cls_token=False))
        self.blocks = nn.ModuleList(CrossBlock(dim, cfg.num_heads, mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim)
        self.apply(init_vit_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, z_v: torch.Tensor, ids_mask: torch.Tensor) -> torch.Tensor:
        q = self.mask_token + self.pos_embed[ids_mask]  # b n_mask d
        for blk in self.blocks:
            q = run_block(blk, q, torch.cat([z_v, q], dim=1), checkpointing=self.grad_checkpointing)
        return self.norm(q)


class MaskedPatchDecoder(nn.Module):
    """Reconstructs masked patches from ``z_m`` only: ``forward(z_m, ids_mask)``.

    ``z_m`` is projected to the decoder width, given the decoder's position embedding of each masked patch,
    and mixed by self-attention among the masked tokens. The head emits ``p * num_bins`` logits per patch
    (``target="ce"``, shape ``[b, n_mask, p, K]``) or ``p`` values (``target="mse"``, ``[b, n_mask, p]``).
    """

    def __init__(
        self,
        num_patches: int,
        patch_size: int,
        in_dim: int,
        cfg: DecoderConfig,
        num_bins: int | None,
        grad_checkpointing: bool,
    ):
        super().__init__()
        self.num_bins = num_bins
        self.grad_checkpointing = grad_checkpointing
        self.embed = nn.Linear(in_dim, cfg.embed_dim)
        self.register_buffer("pos_embed", sincos_pos_embed_1d(num_patches, cfg.embed_dim, cls_token=False))
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.head = nn.Linear(cfg.embed_dim, patch_size * (num_bins or 1))
        self.apply(init_vit_weights)

    def forward(self, z_m: torch.Tensor, ids_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(z_m) + self.pos_embed[ids_mask]
        for blk in self.blocks:
            x = run_block(blk, x, checkpointing=self.grad_checkpointing)
        out = self.head(self.norm(x))
        if self.num_bins is None:
            return out  # b n_mask p
        return rearrange(out, "b n (p k) -> b n p k", k=self.num_bins)


@dataclass
class FCAEOutput:
    pred: torch.Tensor  # [b, n_mask, p, K] logits (ce) or [b, n_mask, p] values (mse)
    target_patches: torch.Tensor  # [b, n_mask, p] raw masked voxels
    z_m: torch.Tensor  # [b, n_mask, d] regressor prediction
    z_m_target: torch.Tensor  # [b, n_mask, d] stop-gradient encoder latents of the masked patches
    ids_keep: torch.Tensor  # [b, n_keep]
    ids_mask: torch.Tensor  # [b, n_mask]


class FCAE(nn.Module):
    """The paper's fCAE. Parts: ``encoder`` (FMRIEncoder), ``regressor``, ``decoder``.

    Alignment target: ``stopgrad(E(X_m))``, the *same* encoder (same weights, no momentum copy) run under
    ``torch.no_grad`` on the masked patches at their positions, cls dropped. This follows CAE, whose target
    is the encoder's own output with stop-gradient; gradients of the alignment loss therefore reach the
    encoder only through ``Z_v`` and the regressor.
    """

    def __init__(
        self,
        num_voxels: int,
        encoder: EncoderConfig,
        regressor: RegressorConfig,
        decoder: DecoderConfig,
        num_bins: int = 32,
        clip: float = 3.0,
        target: str = "ce",
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if target not in ("ce", "mse"):
            raise ValueError(f"target must be 'ce' or 'mse', got {target!r}")
        self.model_args = {
            "num_voxels": num_voxels,
            **config_dicts(encoder=encoder, regressor=regressor, decoder=decoder),
            "num_bins": num_bins,
            "clip": clip,
            "target": target,
        }
        self.target = target
        self.encoder = FMRIEncoder(num_voxels, encoder, grad_checkpointing)
        self.embed_dim = encoder.embed_dim
        self.patch_size = encoder.patch_size
        n = self.encoder.num_patches
        self.regressor = LatentContextRegressor(
            n, encoder.embed_dim, regressor, encoder.mlp_ratio, grad_checkpointing
        )
        head_bins = num_bins if target == "ce" else None  # None: regress raw values
        self.decoder = MaskedPatchDecoder(
            n, encoder.patch_size, encoder.embed_dim, decoder, head_bins, grad_checkpointing
        )
        self.discretizer = VoxelDiscretizer(num_bins, clip) if target == "ce" else None

    def forward(
        self, x: torch.Tensor, mask_ratio: float = 0.75, generator: torch.Generator | None = None
    ) -> FCAEOutput:
        """``x [b, V]`` z-scored voxels -> predictions and latents for one random masking."""
        ids_keep, ids_mask, _ = random_masking(
            x.shape[0], self.encoder.num_patches, mask_ratio, generator, x.device
        )
        z_v = self.encoder(x, ids_keep)  # b 1+n_keep d, cls first
        z_m = self.regressor(z_v, ids_mask)  # b n_mask d
        pred = self.decoder(z_m, ids_mask)
        with torch.no_grad():
            z_m_target = self.encoder(x, ids_mask)[:, 1:]
        target_patches = gather_tokens(patchify(x, self.patch_size), ids_mask)
        return FCAEOutput(pred, target_patches, z_m, z_m_target, ids_keep, ids_mask)

    @torch.no_grad()
    def reconstruct(
        self, x: torch.Tensor, mask_ratio: float = 0.75, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For visualisation: ``[b, V]`` with visible patches copied from ``x`` and masked ones predicted
        (expected value over bins for ``ce``), and the patch mask ``[b, N]`` (1 = masked)."""
        out = self(x, mask_ratio, generator)
        pred = self.discretizer.decode(out.pred) if self.discretizer is not None else out.pred.float()
        patches = patchify(x, self.patch_size).clone()
        patches.scatter_(1, out.ids_mask[..., None].expand_as(pred), pred.to(patches.dtype))
        mask = torch.zeros(patches.shape[:2], device=x.device).scatter_(1, out.ids_mask, 1.0)
        return unpatchify(patches), mask

    def parameter_counts(self) -> dict[str, int]:
        counts = {
            name: sum(p.numel() for p in getattr(self, name).parameters())
            for name in ("encoder", "regressor", "decoder")
        }
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts


def fcae_loss(out: FCAEOutput, discretizer: VoxelDiscretizer | None, lam: float) -> dict[str, torch.Tensor]:
    """``loss = rec + lam * align``.

    ``rec``: cross-entropy of the predicted bin logits against the discretised masked voxels when ``pred``
    carries a bin axis (needs ``discretizer``), else MSE on the raw values. ``align``: MSE between ``z_m``
    and the detached target latents. Both are computed in float32 so bf16 autocast stays stable.
    """
    if out.pred.ndim == out.target_patches.ndim + 1:
        if discretizer is None:
            raise ValueError("cross-entropy targets need a VoxelDiscretizer")
        rec = F.cross_entropy(
            out.pred.float().flatten(0, -2), discretizer.encode(out.target_patches).flatten()
        )
    else:
        rec = F.mse_loss(out.pred.float(), out.target_patches.float())
    align = F.mse_loss(out.z_m.float(), out.z_m_target.detach().float())
    return {"loss": rec + lam * align, "rec": rec, "align": align}
