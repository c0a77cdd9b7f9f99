"""Optimiser and schedule shared by every stage: AdamW without decay on norms/biases/tokens, and a
linear warmup into a cosine decay that ends at ``min_lr`` (the paper's 1.7e-3 -> 1e-4 for stage 1)."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn


def adamw(
    module: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW over the module's trainable parameters; fused kernels where every parameter is on CUDA.

    Biases, LayerNorm weights, cls/mask tokens and learned position embeddings are not decayed
    (1-D parameters or names ending in ``token``), as in MAE and CAE.
    """
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith("token") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.is_cuda for p in decay + no_decay) and bool(decay + no_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, lr: float, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: 0 -> lr linearly over ``warmup_steps``, then cosine from lr to ``min_lr``."""
    total_steps = max(total_steps, 1)
    warmup_steps = min(max(warmup_steps, 0), total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return (min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))) / lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw_warmup_cosine(
    module: L.LightningModule, lr: float, min_lr: float, warmup_fraction: float, weight_decay: float
) -> dict:
    """``configure_optimizers`` for every stage: :func:`adamw` over the module's trainable parameters
    (frozen parts such as CLIP or the LDM's VQ are skipped by ``requires_grad``), stepped per batch
    through :func:`warmup_cosine` over the trainer's estimated number of steps."""
    optimizer = adamw(module, lr, weight_decay)
    total = module.trainer.estimated_stepping_batches
    scheduler = warmup_cosine(optimizer, total, int(warmup_fraction * total), lr, min_lr)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
