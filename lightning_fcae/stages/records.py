"""Checkpoints that describe their models (``checkpoint["models"]``, read by ``models/factory.py``)."""

from __future__ import annotations

from ..models.factory import model_entry


class RecordsModels:
    """LightningModule mixin: ``on_save_checkpoint`` records, for each attribute named in
    ``recorded_models`` (and not None: an optional part), the plain model's class and arguments, so that
    any later step rebuilds it from the checkpoint alone, with strict loading and no LightningModule."""

    recorded_models: tuple[str, ...] = ()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["models"] = {
            name: model_entry(getattr(self, name))
            for name in self.recorded_models
            if getattr(self, name, None) is not None
        }
