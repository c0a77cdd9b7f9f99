"""A per-subject linear path from voxels to CLIP's token grid, beside the deep encoder (not in the paper).

On the embedded benchmark a closed-form ridge from voxels decodes CLIP better than the deep encoder after
its stage-2 budget (docs/method.md, "The linear path"). MindEye2 sends voxels through a per-subject linear
layer before its deep backbone; here the linear map stands beside the encoder and starts *as* the ridge
(fitted on train, penalty chosen on val: :func:`lightning_fcae.metrics.ridge.fit_ridge_map`), so stage 2
begins where the yardstick ends and trains from there::

    voxels of subject s      b V      (z-scored, zero-padded: the DataModule's ``fmri``)
    coefficients = x W_s + c_s        b k      W_s [V, k] per subject (rows past the subject's voxels stay 0)
    tokens = coefficients B + m       b T D    B [k, T*D] shared: the leading principal directions of the
                                               training set's centred CLIP tokens, m their mean offset

Reduced rank (``k`` directions of the targets, shared by the subjects) keeps the map small: a full map to
NSD's 50 x 512 tokens would hold 400M weights per subject; at ``k = 256`` it holds 4M, and on the embedded
benchmark a ridge through 64 directions identifies as well as the full one (docs/method.md).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


class VoxelLinearPath(nn.Module):
    """``forward(x [b, V], subject [b]) -> [b, T, D]``: subject ``i`` is ``subjects[i]``.

    Zero-initialised (it predicts ``mean``, 0 until set): :meth:`set_subject` and :meth:`set_basis` load a
    fitted ridge; after that every parameter trains.
    """

    def __init__(self, subjects: list[str], num_voxels: int, rank: int, clip_tokens: int, clip_dim: int):
        super().__init__()
        if not subjects:
            raise ValueError("a linear path needs at least one subject")
        if rank < 1:
            raise ValueError(f"linear path rank must be >= 1, got {rank}")
        self.subjects = list(subjects)
        self.model_args = {
            "subjects": self.subjects,
            "num_voxels": num_voxels,
            "rank": rank,
            "clip_tokens": clip_tokens,
            "clip_dim": clip_dim,
        }
        self.weight = nn.Parameter(torch.zeros(len(subjects), num_voxels, rank))  # s V k
        self.bias = nn.Parameter(torch.zeros(len(subjects), rank))  # s k
        self.basis = nn.Parameter(torch.zeros(rank, clip_tokens * clip_dim))  # k (T D)
        self.mean = nn.Parameter(torch.zeros(clip_tokens, clip_dim))  # T D

    def subject_indices(self, names: list[str]) -> torch.Tensor:
        """Indices of ``names`` in :attr:`subjects` (a ``LookupError`` names an unknown one)."""
        unknown = [n for n in names if n not in self.subjects]
        if unknown:
            raise LookupError(
                f"the linear path was fitted for subjects {self.subjects}, not {unknown}: train stage 2 on "
                "data that holds them"
            )
        return torch.tensor([self.subjects.index(n) for n in names], dtype=torch.long)

    @torch.no_grad()
    def set_subject(self, index: int, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Subject ``index``'s map: ``weight [n_voxels, k]`` over its real voxels, ``bias [k]``."""
        self.weight[index].zero_()
        self.weight[index, : len(weight)] = weight.to(self.weight)
        self.bias[index] = bias.to(self.bias)

    @torch.no_grad()
    def set_basis(self, basis: torch.Tensor, mean: torch.Tensor) -> None:
        """The shared directions ``basis [k, T*D]`` and offset ``mean [T, D]``."""
        self.basis.copy_(basis)
        self.mean.copy_(mean)

    def forward(self, x: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
        parts, rows = [], []
        for s in subject.unique().tolist():  # one matmul per subject present: no [b, V, k] gather
            index = (subject == s).nonzero().squeeze(1)
            parts.append(x[index] @ self.weight[s] + self.bias[s])  # n_s k
            rows.append(index)
        coefficients = torch.cat(parts)[torch.cat(rows).argsort()]  # b k, in the batch's order
        tokens = rearrange(coefficients @ self.basis, "b (t d) -> b t d", t=self.mean.shape[0])
        return tokens + self.mean
