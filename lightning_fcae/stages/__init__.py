"""The stages that train: one LightningModule per stage, wiring models, losses, optimisers and logging,
and what every stage's run shares (:mod:`.defaults`: ``stage_defaults.yaml`` and the precision; the
callbacks and logger the configs name; the frozen-CLIP feature cache the stages read, :mod:`.clip_features`).

Stage 1 (``pretrain``: FCAEPretrain, MAEPretrain, DCMAEPretrain), stage 2 (``align``: FCAEAlign), stage 3
(``diffusion``: LDMFinetune), and the synthetic benchmark's stand-ins (``clip_pretrain``, ``ldm_pretrain``,
``classifier_pretrain``). It may import ``files/``, ``models/``, ``metrics/``, ``data/`` and ``inference/``
(stage 3 samples through it), nothing above.

Stage 1's classes are exported here, imported on first use: ``lightning_fcae.stages.defaults`` is read by
commands whose ``--help`` must not wait for torch.
"""

from __future__ import annotations

import importlib

__all__ = ["DCMAEPretrain", "FCAEPretrain", "MAEPretrain"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".pretrain", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
