"""Identification metrics: can a reconstruction pick out its own stimulus among others?

Every variant reduces to one question, answered by :func:`n_way_top1`: sample ``i`` scores ``m``
candidates (``scores[i, j]``, higher = better match) and is right when its correct candidate beats
``n_way - 1`` distractors drawn without replacement from the other ``m - 1``. Ties count as failures
(the strict ``>`` of MindEye's ``two_way_identification``), so a degenerate model cannot score by ties.

Two ways to average over the draws:

* ``trials=None`` (default): the exact expectation over all draws. If ``k`` other candidates score
  at least as high as the correct one, a draw succeeds with the hypergeometric probability
  ``C(m-1-k, n_way-1) / C(m-1, n_way-1)``. It is the limit MinD-Vis' repeated random draws estimate,
  has no sampling noise and does not depend on sample order, hence not on how DDP shards the set.
* ``trials=T``: MinD-Vis' procedure, ``T`` seeded random draws per sample (``torch.Generator``):
  deterministic for a given seed and sample order.

With ``n_way=2`` the exact value is the fraction of distractors a sample beats, i.e. MindEye's 2-way
identification and MinD-Vis' "pair-wise" accuracy (:func:`pairwise_identification`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_fcae.metrics.image import check_images, ssim_per_image

PairwiseKind = Literal["mse", "pcc", "cosine", "ssim"]


def n_way_top1(
    scores: Tensor, correct: Tensor, n_way: int, trials: int | None = None, seed: int = 0
) -> Tensor:
    """Top-1 accuracy of ``n_way``-way identification, averaged over samples (and draws).

    Args:
        scores: ``[n, m]`` score of candidate ``j`` for sample ``i``; higher is a better match.
        correct: ``[n]`` index of each sample's correct candidate.
        n_way: candidates per draw, the correct one included.
        trials: ``None`` for the exact expectation over draws, else the number of random draws.
        seed: seeds the draws when ``trials`` is set.
    """
    scores, correct = scores.detach().double().cpu(), correct.long().cpu()
    n, m = scores.shape
    if not 2 <= n_way <= m:
        raise ValueError(f"{n_way}-way identification needs at least {n_way} candidates, got {m}")
    right = scores.gather(1, correct[:, None])  # n 1
    if trials is None:
        rivals = (scores >= right).sum(1) - 1  # n: other candidates at least as good as the correct one
        t = torch.arange(n_way - 1, dtype=torch.float64)
        # P(no rival among n_way-1 draws from m-1) = prod_t (m-1-rivals-t) / (m-1-t)
        return ((m - 1 - rivals[:, None] - t).clamp_min(0) / (m - 1 - t)).prod(1).mean().float()
    generator = torch.Generator().manual_seed(seed)
    hits = torch.zeros(n, dtype=torch.float64)
    for _ in range(trials):
        keys = torch.rand(n, m, generator=generator)  # n m: random order of the candidates
        keys.scatter_(1, correct[:, None], 2.0)  # ... with the correct one never drawn
        drawn = keys.topk(n_way - 1, dim=1, largest=False).indices  # n, n_way-1: uniform subset
        hits += (right > scores.gather(1, drawn)).all(1)
    return (hits.mean() / trials).float()


def _ssim_matrix(preds: Tensor, target: Tensor, pairs_per_batch: int) -> Tensor:
    """``[n, n]`` SSIM of every (reconstruction, image) pair, MinD-Vis style: RGB (mean over channels),
    skimage's default 7 x 7 uniform window. ``pairs_per_batch`` bounds memory."""
    n = len(preds)
    rows = max(1, pairs_per_batch // n)
    blocks = []
    for start in range(0, n, rows):
        p = preds[start : start + rows]  # r 3 H W
        r = len(p)
        ssim = ssim_per_image(p.repeat_interleave(n, 0), target.repeat(r, 1, 1, 1), gaussian=False)
        blocks.append(ssim.view(r, n))
    return torch.cat(blocks)


def score_matrix(preds: Tensor, target: Tensor, metric: PairwiseKind, pairs_per_batch: int = 256) -> Tensor:
    """``[n, n]`` matrix ``S[i, j]`` = match of prediction ``i`` to target ``j``, higher is better.

    ``mse`` is negated mean squared error, ``pcc`` the Pearson correlation and ``cosine`` the cosine
    similarity of the flattened ``[n, ...]`` inputs; ``ssim`` needs ``[n, 3, H, W]`` images in [0, 1].
    """
    if metric == "ssim":
        check_images(preds, target)
        return _ssim_matrix(preds.float(), target.float(), pairs_per_batch)
    p, t = preds.flatten(1).float(), target.flatten(1).float()  # n d
    if metric == "mse":
        return -torch.cdist(p, t).square() / p.shape[1]
    if metric == "pcc":
        p, t = p - p.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    elif metric != "cosine":
        raise ValueError(f"unknown metric {metric!r}; expected mse, pcc, cosine or ssim")
    return F.normalize(p, dim=1) @ F.normalize(t, dim=1).T


def pairwise_identification(
    preds_feat: Tensor, target_feat: Tensor, metric: PairwiseKind = "pcc", pairs_per_batch: int = 256
) -> Tensor:
    """MinD-Vis / vis-dec "pair-wise" identification (= MindEye's 2-way): for each prediction ``i``, the
    fraction of other targets ``j != i`` it matches worse than its own (``S[i, i] > S[i, j]``, lower
    is better for MSE), averaged over ``i``. Inputs are ``[n, ...]`` features or images."""
    scores = score_matrix(preds_feat, target_feat, metric, pairs_per_batch)
    return n_way_top1(scores, torch.arange(len(scores)), n_way=2)


class _Accumulating(Metric):
    """Keeps every ``preds`` / ``target`` row (``cat`` states): identification compares across the set."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("preds", [], dist_reduce_fx="cat")
        self.add_state("target", [], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ")
        self.preds.append(preds.detach())
        self.target.append(target.detach())


class NWayIdentification(_Accumulating):
    """``n_way``-way top-1 identification of embeddings ``[b, d]`` by cosine similarity: the predicted
    embedding of sample ``i`` against the true embedding of ``i`` and ``n_way - 1`` true embeddings of
    other samples. ``n_way=2`` is MindEye's 2-way, ``n_way=50`` MinD-Vis' 50-way. See the module doc for
    ``trials`` (``None`` = exact expectation)."""

    def __init__(self, n_way: int = 50, trials: int | None = None, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if n_way < 2:
            raise ValueError(f"n_way must be >= 2, got {n_way}")
        self.n_way, self.trials, self.seed = n_way, trials, seed

    def compute(self) -> Tensor:
        preds, target = dim_zero_cat(self.preds), dim_zero_cat(self.target)  # n d
        if len(target) < self.n_way:
            raise ValueError(
                f"{self.n_way}-way identification needs at least {self.n_way} samples, got {len(target)}"
            )
        scores = score_matrix(preds, target, "cosine")
        return n_way_top1(scores, torch.arange(len(scores)), self.n_way, self.trials, self.seed)


class PairwiseIdentification(_Accumulating):
    """:func:`pairwise_identification` over every image ``[b, 3, H, W]`` seen. Keeps all images in memory;
    ``kind="ssim"`` scores all n^2 pairs, ``pairs_per_batch`` at a time."""

    def __init__(self, kind: PairwiseKind = "pcc", pairs_per_batch: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.kind, self.pairs_per_batch = kind, pairs_per_batch

    def compute(self) -> Tensor:
        preds, target = dim_zero_cat(self.preds), dim_zero_cat(self.target)
        return pairwise_identification(preds, target, self.kind, self.pairs_per_batch)


class ClassifierNWayTop1(Metric):
    """MinD-Vis' "50-way top-1 accuracy": the classifier's top class on the seen image is taken as its
    label; a reconstruction is right when, among that class and ``n_way - 1`` random other classes,
    the classifier's logit for it is the highest (softmax would not change the ranking).

    ``classifier`` maps ``[b, 3, H, W]`` images in [0, 1] to ``[b, classes]`` logits and includes its own
    preprocessing; MinD-Vis uses torchvision's ImageNet ViT-H/14, i.e.
    ``nn.Sequential(ViT_H_14_Weights.DEFAULT.transforms(), vit_h_14(weights=...))``. It is a submodule,
    so ``.to(device)`` moves it. ``trials`` as in the module doc (MinD-Vis: random draws).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self, classifier: nn.Module, n_way: int = 50, trials: int | None = None, seed: int = 0, **kwargs
    ):
        super().__init__(**kwargs)
        self.classifier, self.n_way, self.trials, self.seed = classifier, n_way, trials, seed
        self.add_state("logits", [], dist_reduce_fx="cat")
        self.add_state("label", [], dist_reduce_fx="cat")

    @torch.no_grad()
    def update(self, preds: Tensor, target: Tensor) -> None:
        check_images(preds, target)
        self.classifier.eval()  # a parent's .train() must not switch on dropout / batch-norm updates
        self.logits.append(self.classifier(preds).float())  # b classes
        self.label.append(self.classifier(target).argmax(1))  # b

    def compute(self) -> Tensor:
        return n_way_top1(
            dim_zero_cat(self.logits), dim_zero_cat(self.label), self.n_way, self.trials, self.seed
        )
