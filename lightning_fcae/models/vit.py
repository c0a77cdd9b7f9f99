"""1-D Vision Transformer parts for fMRI: patching, positional embeddings, blocks, masking, encoder.

A voxel vector ``[b, V]`` (V padded to a multiple of the patch size upstream) is cut into
``N = V // p`` consecutive patches of ``p`` voxels, one token each, as in MinD-Vis.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightning_fcae.models.sizes import EncoderConfig


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[b, V] -> [b, N, p]``: consecutive voxels form a patch, in the order PatchEmbed1D sees them."""
    return rearrange(x, "b (n p) -> b n p", p=p)


def unpatchify(x: torch.Tensor) -> torch.Tensor:
    """``[b, N, p] -> [b, V]``."""
    return rearrange(x, "b n p -> b (n p)")


def sincos_pos_embed_1d(n: int, d: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed sin-cos embeddings for positions ``0..n-1`` as in MAE, ``[n (+1), d]``.

    Fixed rather than learned: the position signal is the same for every subject, needs no data, and the
    same table gives the fCAE regressor/decoder the position of any masked patch. With ``cls_token`` a zero
    row is prepended for the cls slot.
    """
    if d % 2:
        raise ValueError(f"embedding dim must be even, got {d}")
    omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
    angles = torch.arange(n, dtype=torch.float64)[:, None] * omega[None]  # n d/2
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, d, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def random_masking(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random split of patch indices into kept and masked ones (MAE: argsort of uniform noise).

    Every sample keeps exactly ``round(N * (1 - mask_ratio))`` patches, clamped so that at least one patch
    is kept and one masked; equal counts let the batch stay a dense tensor. Returns ``ids_keep [b, n_keep]``,
    ``ids_mask [b, n_mask]`` and ``ids_restore [b, N]`` (the inverse permutation of ``cat(keep, mask)``).
    """
    n_keep = min(max(int(round(num_patches * (1 - mask_ratio))), 1), num_patches - 1)
    noise_device = generator.device if generator is not None else device
    noise = torch.rand(batch, num_patches, generator=generator, device=noise_device).to(device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    return ids_shuffle[:, :n_keep], ids_shuffle[:, n_keep:], ids_restore


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Select tokens per sample: ``x [b, N, d]``, ``ids [b, n] -> [b, n, d]``."""
    return torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[-1]))


def run_block(block: nn.Module, *args: torch.Tensor, checkpointing: bool = False) -> torch.Tensor:
    """Call ``block``, recomputing its activations in backward when ``checkpointing`` (trades compute
    for memory on long voxel sequences). Skipped when no graph is being built."""
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class PatchEmbed1D(nn.Module):
    """Voxels ``[b, V]`` -> tokens ``[b, N, d]`` with a 1-D conv whose kernel = stride = patch size, i.e. a
    shared linear map applied to each patch (the paper's "1-D conv layers convert fMRI to embeddings")."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv1d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(x[:, None]), "b d n -> b n d")


class Mlp(nn.Sequential):
    def __init__(self, dim: int, mlp_ratio: float):
        hidden = int(dim * mlp_ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (flash / memory-efficient kernels
    on GPU, works under autocast and torch.compile)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h n e -> b n (h e)"))


class CrossAttention(nn.Module):
    """Queries ``[b, n, d]`` attend to a context ``[b, m, d]``; separate q and kv projections."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = rearrange(self.q(x), "b n (h e) -> b h n e", h=self.num_heads)
        k, v = rearrange(self.kv(context), "b m (two h e) -> two b h m e", two=2, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h n e -> b n (h e)"))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    """Pre-norm cross-attention block: only the queries ``x`` are updated; the context is read-only."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_kv(context))
        return x + self.mlp(self.norm2(x))


def init_vit_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform linears (and the patch conv seen as a linear), unit LayerNorms."""
    if isinstance(module, nn.Linear | nn.Conv1d):
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))  # conv as [out, in*k]
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class FMRIEncoder(nn.Module):
    """ViT encoder shared by fCAE and MAE: patch embed + cls token + fixed pos embed + Blocks + LayerNorm.

    ``forward(x, ids_keep)`` embeds all patches, adds positions, and then runs the transformer on the
    selected patches only, so the cost scales with the visible fraction. The cls token is always first.
    """

    def __init__(self, num_voxels: int, cfg: EncoderConfig, grad_checkpointing: bool = False):
        super().__init__()
        if num_voxels % cfg.patch_size:
            raise ValueError(f"num_voxels={num_voxels} must be padded to a multiple of {cfg.patch_size}")
        # what rebuilds this encoder (models/factory.py); grad_checkpointing is a training choice
        self.model_args = {"num_voxels": num_voxels, "cfg": asdict(cfg)}
        self.patch_size = cfg.patch_size
        self.num_patches = num_voxels // cfg.patch_size
        self.embed_dim = cfg.embed_dim
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = PatchEmbed1D(cfg.patch_size, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed_1d(self.num_patches, cfg.embed_dim)[None])
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.apply(init_vit_weights)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """``x [b, V]``, ``ids_keep [b, n]`` (None = all patches) -> ``[b, 1 + n, d]``, cls first."""
        tokens = self.patch_embed(x) + self.pos_embed[:, 1:]  # b N d
        if ids_keep is not None:
            tokens = gather_tokens(tokens, ids_keep)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        for blk in self.blocks:
            tokens = run_block(blk, tokens, checkpointing=self.grad_checkpointing)
        return self.norm(tokens)
