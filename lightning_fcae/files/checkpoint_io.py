"""Lightning's checkpoint writer, made atomic (:mod:`lightning_fcae.files.atomic`)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from .atomic import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoints, written with :func:`atomic_file`: a crash while
    ``last.ckpt`` (or the epoch file it links to) is rewritten leaves the previous one whole, where the
    stock writer, staging in the system temp folder, copies into the target when that is another file
    system. Remote paths (``s3://`` ...) keep Lightning's writer. The CLI adds it to every trainer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_file(path) as f:
            torch.save(checkpoint, f)
