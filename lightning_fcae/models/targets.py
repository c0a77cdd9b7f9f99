"""Discretised voxel targets for the fCAE reconstruction loss."""

from __future__ import annotations

import torch
from torch import nn


class VoxelDiscretizer(nn.Module):
    """Uniform bins over ``[-clip, clip]`` for z-scored voxel values.

    Why discretise: the paper trains the fCAE decoder with cross-entropy against discretised masked patches,
    the 1-D analogue of CAE predicting visual-tokenizer ids. A classification target is bounded, so a few
    heavy-tailed fMRI values (motion, draining veins) cannot dominate the loss the way they dominate an MSE,
    and the softmax can express uncertainty (a multi-modal guess) instead of regressing to the mean.

    Why uniform bins on ``[-clip, clip]``: voxels are z-scored upstream, so ``clip = 3`` keeps ~99.7% of a
    Gaussian in range and values beyond are clipped into the end bins. Uniform bins need no fitting pass
    over the data and are the same for every subject. With the default 32 bins a bin is 0.1875 std wide.
    """

    def __init__(self, num_bins: int = 32, clip: float = 3.0):
        super().__init__()
        if num_bins < 2 or clip <= 0:
            raise ValueError(f"need num_bins >= 2 and clip > 0, got {num_bins}, {clip}")
        self.num_bins = num_bins
        self.clip = clip
        self.bin_width = 2 * clip / num_bins
        centers = -clip + self.bin_width * (torch.arange(num_bins, dtype=torch.float32) + 0.5)
        self.register_buffer("bin_centers", centers, persistent=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Values (any shape) -> bin indices (long, same shape). Bin ``i`` covers
        ``[-clip + i*w, -clip + (i+1)*w)``; ``x >= clip`` falls in the last bin, ``x < -clip`` in the first."""
        idx = torch.floor((x.float() + self.clip) / self.bin_width)
        return idx.clamp(0, self.num_bins - 1).long()

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., K]`` -> expected value ``[...]`` (softmax-weighted bin centres), in z-score units."""
        return logits.float().softmax(dim=-1) @ self.bin_centers
