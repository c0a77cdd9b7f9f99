"""Loggers the configs name: Lightning's, less the noise they print on every stage."""

from __future__ import annotations

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


class WandbLogger(LightningWandbLogger):
    """Lightning's :class:`~lightning.pytorch.loggers.WandbLogger`, without the ``anonymous=None`` it
    always hands ``wandb.init``: wandb >= 0.19 answers any value with "The anonymous setting has no
    effect" on every run. Every argument is Lightning's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
