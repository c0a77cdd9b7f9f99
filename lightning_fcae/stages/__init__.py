"""LightningModules, one per stage: they wire models, losses, optimisers and logging.

Stage 1 is exported here; ``stages.align`` (FCAEAlign) and ``stages.clip_pretrain`` (ClipPretrain)
import open_clip, so they are imported by their module path only when used.
"""

from .pretrain import DCMAEPretrain, FCAEPretrain, MAEPretrain

__all__ = ["DCMAEPretrain", "FCAEPretrain", "MAEPretrain"]
