"""Reconstruction scores, one home for training-time monitoring and the ``reconstruct`` evaluation.

Both :class:`~lightning_fcae.metrics.callbacks.ReconstructionMetrics` (during stage 3) and
``lightning-fcae reconstruct`` (the test set) score through these functions, so they report identical
numbers for identical images.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torchvision.utils import make_grid

from .identification import NWayIdentification, PairwiseKind, pairwise_identification
from .image import SSIM, ClipScore, ImageMSE, MeanOfScores, PixCorr
from .perceptual import LPIPS_BACKBONES, LPIPSMetric, MissingWeightsError, mindeye_feature_metrics

# Every score here is this process' own: under DDP only rank 0 scores, and a metric's default sync in
# compute() would wait forever for the other ranks.
LOCAL = {"sync_on_compute": False}
GRID_GROUPS_PER_ROW = 8  # images per grid row, truth included: truth | recon pairs come 4 to a row


def mean_score(metric: MeanOfScores, preds: Tensor, target: Tensor, chunk: int = 64) -> float:
    """``metric`` over ``[n, ...]`` inputs fed ``chunk`` rows at a time (bounded memory at 256 px)."""
    metric = metric.to(preds.device)
    for p, t in zip(preds.split(chunk), target.split(chunk)):
        metric.update(p, t)
    return metric.compute().item()


def low_level_metrics(preds: Tensor, target: Tensor) -> dict[str, float]:
    """MindEye's per-image scores of ``[n, 3, H, W]`` images in [0, 1], averaged over images."""
    return {
        "mse": mean_score(ImageMSE(**LOCAL), preds, target),
        "pixcorr": mean_score(PixCorr(**LOCAL), preds, target),
        "ssim": mean_score(SSIM(**LOCAL), preds, target),
    }


def pairwise_metrics(
    preds: Tensor, target: Tensor, kinds: Iterable[PairwiseKind] = ("mse", "pcc", "ssim")
) -> dict[str, float]:
    """MinD-Vis' pair-wise identification of ``[n, 3, H, W]`` images in [0, 1] (chance 0.5)."""
    return {f"pairwise_{kind}": pairwise_identification(preds, target, kind).item() for kind in kinds}


def perceptual_metrics(preds: Tensor, target: Tensor) -> tuple[dict[str, float], dict[str, str]]:
    """LPIPS and MindEye's feature metrics whose weights are on disk; the others with the reason."""
    values, skipped = {}, {}
    for net in LPIPS_BACKBONES:
        try:
            values[f"lpips_{net}"] = mean_score(LPIPSMetric(net, **LOCAL), preds, target, chunk=32)
        except MissingWeightsError as err:
            skipped[f"lpips_{net}"] = str(err)
    suite = mindeye_feature_metrics(preds, target)
    suite.skipped.pop("clip", None)  # CLIP identification is in the raw block
    return values | suite.values, skipped | suite.skipped


def subject_scores(preds: Tensor, truth: Tensor, clip: tuple[Tensor, Tensor] | None, n_way: int) -> dict:
    """All blocks for one subject: ``preds``/``truth`` ``[n, 3, H, W]`` uint8, ``clip`` their ``[n, D]``
    CLIP embeddings. A block's ``skipped`` says why a metric is absent."""
    p, t = preds.float() / 255, truth.float() / 255
    raw, raw_skipped = low_level_metrics(p, t), {}
    if clip is not None:
        raw["clip_score"] = mean_score(ClipScore(**LOCAL), *clip)
        for n in sorted({2, n_way}):
            if n > len(p):
                raw_skipped[f"clip_{n}way"] = f"needs at least {n} images per subject, got {len(p)}"
                continue
            identification = NWayIdentification(n, **LOCAL)
            identification.update(*clip)
            raw[f"clip_{n}way"] = identification.compute().item()
    perceptual, perceptual_skipped = perceptual_metrics(p, t)
    return {
        "raw": (raw, raw_skipped),
        "pairwise": (pairwise_metrics(p, t), {}),
        "perceptual": (perceptual, perceptual_skipped),
    }


def comparison_grid(truth: Tensor, recon: Tensor) -> Tensor:
    """``truth [n, 3, H, W]`` and ``recon [n, s, 3, H, W]`` in [0, 1] -> one ``[3, H', W']`` image in
    which each seen image is followed by its ``s`` reconstructions, as many groups per row as fit."""
    group = 1 + recon.shape[1]
    per_row = group * max(1, GRID_GROUPS_PER_ROW // group)
    tiles = torch.cat([truth[:, None].to(recon), recon], dim=1).flatten(0, 1)  # n*group 3 H W
    return make_grid(tiles.float().cpu(), nrow=per_row, padding=2, pad_value=1.0)
