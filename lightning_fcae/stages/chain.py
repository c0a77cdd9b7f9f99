"""The checkpoints a stage reads from an earlier one, and what to say when one is missing: a step left
out, which deserves the command that writes the file rather than a bare "does not exist"."""

from __future__ import annotations

from pathlib import Path

# what writes each input checkpoint by default (the paths the next stage's config reads)
STAGE1_WRITER = (
    "stage 1 (`lightning fit --config configs/stage1_fcae.yaml` writes checkpoints/stage1_fcae/last.ckpt; "
    "stage1_mae.yaml / stage1_dcmae.yaml write checkpoints/stage1_mae|stage1_dcmae/last.ckpt)"
)
STAGE2_WRITER = (
    "stage 2 (`lightning fit --config configs/stage2_align.yaml` writes checkpoints/stage2_align/best.ckpt "
    "and last.ckpt, after stage 1)"
)
DCMAE_PHASE1_WRITER = (
    "vis-dec's phase 1 (`lightning fit --config configs/stage1_dcmae.yaml` writes "
    "checkpoints/stage1_dcmae/last.ckpt)"
)


def require_checkpoint(path: str | Path, argument: str, written_by: str) -> None:
    """Raise FileNotFoundError naming the stage and command that write ``path`` (``written_by``) when
    it is not there."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{argument} {path} does not exist: run {written_by} first, or point {argument} at the "
            "checkpoint you trained (lightning-fcae pipeline chains every stage for you)"
        )
