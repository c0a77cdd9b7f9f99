"""LightningModules, one per stage: they wire models, losses, optimisers and logging."""

from .align import FCAEAlign, load_aligned
from .clip_pretrain import ClipPretrain
from .pretrain import FCAEPretrain, MAEPretrain, load_pretrained

__all__ = ["ClipPretrain", "FCAEAlign", "FCAEPretrain", "MAEPretrain", "load_aligned", "load_pretrained"]
