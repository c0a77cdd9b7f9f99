"""Per-subject linear maps from voxels, set to a ridge solution: beside the deep encoder (stage 2's linear
path to CLIP's tokens) and from voxels to pixels (the low-level image that starts img2img reconstruction).
Neither is in the paper.

On the embedded benchmark a closed-form ridge from voxels decodes CLIP and pixels better than the deep
encoder after its stage-2 budget (docs/method.md, "The linear path"). MindEye2 sends voxels through a
per-subject linear layer before its deep backbone; here the linear map starts *as* the ridge (fitted on
train, penalty chosen on val: :mod:`lightning_fcae.stages.linear_path`)::

    voxels of subject s      b V         (z-scored, zero-padded: the DataModule's ``fmri``)
    coefficients = x W_s + c_s           b k      W_s [V, k] per subject (rows past the subject's voxels: 0)
    outputs = coefficients B + m         b *out   B [k, prod(out)] shared: the leading principal directions
                                                  of the training targets, m their mean

Reduced rank (``k`` directions of the targets, shared by the subjects) keeps a map small: a full map to
NSD's 50 x 512 CLIP tokens would hold 400M weights per subject; at ``k = 128`` it holds 2M, and on the
embedded benchmark a ridge through 64 directions identifies as well as the full one (docs/method.md).
"""

from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class VoxelLinearMap(nn.Module):
    """``forward(x [b, V], subject [b]) -> [b, *out_shape]``: subject ``i`` is ``subjects[i]``.

    Zero-initialised (it predicts 0 until set): :meth:`set_subject` and :meth:`set_basis` load a fitted
    ridge. Every parameter trains where the owner trains it.
    """

    def __init__(self, subjects: list[str], num_voxels: int, rank: int, out_shape: list[int]):
        super().__init__()
        if not subjects:
            raise ValueError("a linear map from voxels needs at least one subject")
        if rank < 1:
            raise ValueError(f"the rank of a linear map from voxels must be >= 1, got {rank}")
        self.subjects, self.out_shape = list(subjects), list(out_shape)
        self.model_args = {
            "subjects": self.subjects,
            "num_voxels": num_voxels,
            "rank": rank,
            "out_shape": self.out_shape,
        }
        self.weight = nn.Parameter(torch.zeros(len(subjects), num_voxels, rank))  # s V k
        self.bias = nn.Parameter(torch.zeros(len(subjects), rank))  # s k
        self.basis = nn.Parameter(torch.zeros(rank, math.prod(out_shape)))  # k (*out)
        self.mean = nn.Parameter(torch.zeros(*out_shape))  # *out

    @property
    def rank(self) -> int:
        return self.bias.shape[1]

    def subject_indices(self, names: list[str]) -> torch.Tensor:
        """Indices of ``names`` in :attr:`subjects` (a ``LookupError`` names an unknown one)."""
        unknown = sorted({n for n in names if n not in self.subjects})
        if unknown:
            raise LookupError(
                f"the map from voxels was fitted for subjects {self.subjects}, not {unknown}: train on data "
                "that holds them"
            )
        return torch.tensor([self.subjects.index(n) for n in names], dtype=torch.long)

    @torch.no_grad()
    def set_subject(self, index: int, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Subject ``index``'s map: ``weight [n_voxels, <= k]`` over its real voxels, ``bias [<= k]`` (a
        rank-deficient fit leaves the remaining directions at zero)."""
        self.weight[index].zero_()
        self.bias[index].zero_()
        self.weight[index, : weight.shape[0], : weight.shape[1]] = weight.to(self.weight)
        self.bias[index, : len(bias)] = bias.to(self.bias)

    @torch.no_grad()
    def set_basis(self, basis: torch.Tensor, mean: torch.Tensor) -> None:
        """The shared directions ``basis [<= k, prod(out)]`` and offset ``mean`` (``out_shape``)."""
        self.basis.zero_()
        self.basis[: len(basis)] = basis.to(self.basis)
        self.mean.copy_(mean.reshape(self.mean.shape))

    def forward(self, x: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
        parts, rows = [], []
        for s in subject.unique().tolist():  # one matmul per subject present: no [b, V, k] gather
            index = (subject == s).nonzero().squeeze(1)
            parts.append(x[index] @ self.weight[s] + self.bias[s])  # n_s k
            rows.append(index)
        coefficients = torch.cat(parts)[torch.cat(rows).argsort()]  # b k, in the batch's order
        return (coefficients @ self.basis).view(-1, *self.out_shape) + self.mean


class LowLevelDecoder(ModelMixin, ConfigMixin):
    """Voxels -> a blurry image ``[b, 3, size, size]`` in [0, 1]: the ridge yardstick's voxels -> pixels map,
    per subject (:class:`VoxelLinearMap`), saved with a run so that img2img reconstruction (``reconstruct
    --init lowlevel``) starts from it without refitting. Input: z-scored, zero-padded voxels, as
    :class:`~lightning_fcae.models.fmri_condition.FMRIConditionEncoder` passes them."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, subjects: list[str], num_voxels: int, rank: int, size: int):
        super().__init__()
        self.map = VoxelLinearMap(subjects, num_voxels, rank, [3, size, size])

    def forward(self, fmri: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
        return self.map(fmri, subject).clamp(0, 1)
