"""Reading checkpoints and exported weights with an error that names the file and the fix.

A file cut off by a crash (or copied half-way) makes torch fail with ``PytorchStreamReader failed reading
zip archive``, diffusers and safetensors with their own messages, none naming the file; and the next run
fails the same way, forever. These helpers turn that into a :class:`CheckpointError`: a ValueError, so
the CLI prints it as one ``error:`` line. They live in ``models/`` (and import nothing of this package)
because the model loaders (factory, clip, ldm) use them and ``models/`` imports nothing above it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

DAMAGED = "{path} is damaged or not a {kind} (cut off by a crash while it was written, or copied half-way)"


class CheckpointError(ValueError):
    """A checkpoint or exported weights file that cannot be read."""


def export_fix(path: str | Path) -> str:
    """What to do about a damaged export (CLIP weights, an LDM folder): the pipeline re-exports a missing one."""
    return (
        f"delete {path} and rerun the pipeline, which exports it again (or rerun the stage or "
        "`lightning-fcae convert-ldm` that wrote it)"
    )


def check_checkpoint(path: str | Path, fix: str) -> None:
    """Refuse a file that is not a complete zip (torch's checkpoint format), cheaply: the zip directory
    is at the end, so a cut-off file has none. A file in torch's pre-1.6 format (a plain pickle, which has
    no directory to check) is let through to torch."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            if f.read(1) == b"\x80":  # a pickle's protocol opcode: the legacy format
                return
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
