"""Kept so that ``lightning_fcae.checkpoints`` still imports: the checks live in
:mod:`lightning_fcae.models.checkpoints`, where the models that read checkpoints and exports can use them
without importing upward. Importing this imports :mod:`lightning_fcae.models` (torch)."""

from .models.checkpoints import DAMAGED, CheckpointError, check_checkpoint, check_weights_file, export_fix

__all__ = ["DAMAGED", "CheckpointError", "check_checkpoint", "check_weights_file", "export_fix"]
