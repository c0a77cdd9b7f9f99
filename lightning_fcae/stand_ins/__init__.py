"""The synthetic benchmark's stand-ins for pretrained weights (CLIP, LDM) and the judge of their checks:
the shipped folder and its hashes (:mod:`.shipped`), the checks' figures (:mod:`.checks`), the model cards
(:mod:`.cards`) and the shipping of trained stand-ins (:mod:`.build`). The pipeline's own stages train them
(:data:`STAND_IN_STAGES`); ``lightning-fcae stand-ins train | check | verify`` is
:mod:`lightning_fcae.cli.stand_ins`.

It may import ``files/``, ``models/``, ``metrics/``, ``data/`` and ``inference/`` (the checks sample the
LDM); the pipeline (``runs/``) imports it to verify the shipped stand-ins it is given.
"""

from __future__ import annotations

__all__ = ["STAND_IN_STAGES", "StandInError", "StandIns", "load_stand_ins"]
SHIPPED = ("StandInError", "StandIns", "load_stand_ins")
# the pipeline stages that train the stand-ins and the checks' judge, each into OUT/shared/<stage>
STAND_IN_STAGES = ("clip_pretrain", "ldm_vq", "ldm_unet", "classifier")


def __getattr__(name: str):
    """:mod:`.shipped`'s names, imported on first use: it imports torch, which ``stand-ins --help``
    must not wait for."""
    if name in SHIPPED:
        from . import shipped

        return getattr(shipped, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
