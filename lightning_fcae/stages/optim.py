"""Optimiser and schedule shared by every stage: AdamW without decay on norms/biases/tokens, and a
linear warmup into a cosine decay that ends at ``min_lr`` (the paper's 1.7e-3 -> 1e-4 for stage 1)."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn


def adamw(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    lr_scales: dict[str, float] | None = None,
) -> torch.optim.AdamW:
    """AdamW over the module's trainable parameters; fused kernels where every parameter is on CUDA.

    Biases, LayerNorm weights, cls/mask tokens and learned position embeddings are not decayed
    (1-D parameters or names ending in ``token``), as in MAE and CAE. ``lr_scales`` maps a parameter-name
    prefix to a factor on ``lr`` for those parameters (their own groups; the schedule scales them alike).
    """
    groups: dict[tuple[float, bool], list] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        scale = next((f for prefix, f in (lr_scales or {}).items() if name.startswith(prefix)), 1.0)
        decayed = not (param.ndim <= 1 or name.endswith("token"))
        groups.setdefault((scale, decayed), []).append(param)
    groups = [
        {"params": params, "lr": lr * scale, "weight_decay": weight_decay if decayed else 0.0}
        for (scale, decayed), params in sorted(
            groups.items(), key=lambda item: (item[0][0] != 1.0, not item[0][1])
        )
    ]
    params = [p for group in groups for p in group["params"]]
    fused = all(p.is_cuda for p in params) and bool(params)
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
    module: L.LightningModule,
    lr: float,
    min_lr: float,
    warmup_fraction: float,
    weight_decay: float,
    lr_scales: dict[str, float] | None = None,
) -> dict:
    """``configure_optimizers`` for every stage: :func:`adamw` over the module's trainable parameters
    (frozen parts such as CLIP or the LDM's VQ are skipped by ``requires_grad``), stepped per batch
    through :func:`warmup_cosine` over the trainer's estimated number of steps."""
    optimizer = adamw(module, lr, weight_decay, lr_scales=lr_scales)
    total = module.trainer.estimated_stepping_batches
    scheduler = warmup_cosine(optimizer, total, int(warmup_fraction * total), lr, min_lr)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
