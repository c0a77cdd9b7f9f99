"""Per-sample and per-batch transforms: repeats, normalisation, padding, sparsity, images.

Sample-level work (numpy) runs in the DataLoader workers; the random-sparsity augmentation runs on
the batch after it reached the accelerator, where it costs nothing.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from PIL import Image

RepeatMode = Literal["average", "random"]


def padded_length(n_voxels: int, patch_size: int) -> int:
    """Smallest multiple of ``patch_size`` that holds ``n_voxels``."""
    return math.ceil(n_voxels / patch_size) * patch_size


def reduce_repeats(fmri: np.ndarray, mode: RepeatMode, rng: np.random.Generator) -> np.ndarray:
    """``[repeats, voxels] -> [voxels]``.

    ``average`` is the NSD convention for evaluation (less noise); ``random`` draws one trial per
    visit during training, which keeps every trial's noise as free augmentation.
    """
    if fmri.shape[0] == 1:
        return fmri[0].astype(np.float32)
    if mode == "average":
        return fmri.astype(np.float32).mean(0)
    if mode == "random":
        return fmri[rng.integers(fmri.shape[0])].astype(np.float32)
    raise ValueError(f"repeat mode must be 'average' or 'random', got {mode!r}")


def normalise_and_pad(voxels: np.ndarray, mean: np.ndarray, std: np.ndarray, length: int) -> np.ndarray:
    """Z-score with the training statistics, then zero-pad to ``length`` (zero = the voxel mean)."""
    out = np.zeros(length, np.float32)
    out[: voxels.shape[0]] = (voxels - mean) / std
    return out


def image_to_uint8_chw(image: Image.Image, size: int | None) -> torch.Tensor:
    """RGB PIL image -> ``uint8 [3, size, size]``; uint8 keeps worker->trainer IPC 4x smaller."""
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, np.uint8).copy()).permute(2, 0, 1)


def random_sparsity(
    fmri: torch.Tensor, ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero a random ``ratio`` of each sample's real voxels (the paper's RS augmentation, 20%).

    fmri: ``[b, length]``. Padding is zero already and stays zero; drawn independently per sample.
    """
    if ratio <= 0:
        return fmri
    noise = torch.rand(fmri.shape, device=fmri.device, generator=generator)
    return fmri * (noise >= ratio)
