"""LightningModules, one per stage: they wire models, losses, optimisers and logging."""

from .pretrain import FCAEPretrain, MAEPretrain, load_pretrained

__all__ = ["FCAEPretrain", "MAEPretrain", "load_pretrained"]
