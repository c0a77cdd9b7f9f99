"""Checkpoints written atomically, and read back with an error that names the file and the fix.

A file cut off by a crash (or copied half-way) makes torch fail with ``PytorchStreamReader failed reading
zip archive``, diffusers and safetensors with their own messages, none naming the file; and the next run
fails the same way, forever. These helpers turn that into a :class:`CheckpointError`: a ValueError, so
the CLI prints it as one ``error:`` line.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from .atomic import atomic_file

DAMAGED = "{path} is damaged or not a {kind} (cut off by a crash while it was written, or copied half-way)"


class CheckpointError(ValueError):
    """A checkpoint or exported weights file that cannot be read."""


def export_fix(path: str | Path) -> str:
    """What to do about a damaged export (CLIP weights, an LDM folder): the pipeline re-exports a missing one."""
    return (
        f"delete {path} and rerun the pipeline, which exports it again (or rerun the stage or "
        "`lightning-fcae convert-ldm` that wrote it)"
    )


def load_checkpoint(path: str | Path, fix: str = "re-run the stage that wrote it") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on CPU; a damaged file is a :class:`CheckpointError`
    ending in ``fix`` (a missing one stays a FileNotFoundError)."""
    check_checkpoint(path, fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike for a broken file
        raise CheckpointError(f"{DAMAGED.format(path=path, kind='PyTorch checkpoint')}; {fix}") from exc


def check_checkpoint(path: str | Path, fix: str) -> None:
    """Refuse a file that is not a complete zip (torch's checkpoint format), cheaply: the zip directory
    is at the end, so a cut-off file has none."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{DAMAGED.format(path=path, kind='PyTorch checkpoint')}; {fix}")


def check_weights_file(path: str | Path, fix: str) -> None:
    """A ``.safetensors`` file whose header and size agree, or a complete torch zip; else a
    :class:`CheckpointError` ending in ``fix``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        check_checkpoint(path, fix)
        return
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            f.keys()
    except Exception as exc:  # safetensors raises SafetensorError or OSError for a cut-off file
        raise CheckpointError(f"{DAMAGED.format(path=path, kind='safetensors file')}; {fix}") from exc


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
