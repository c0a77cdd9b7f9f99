"""The ridge yardstick: what a closed-form linear decoder from voxels reaches in the method's own scores.

Beside every deep figure the pipeline puts this one (seconds on a CPU), fitted per subject on train with
its penalty chosen on val, scored on test:

* voxels -> the CLIP (stand-in) image embedding, scored by the same n-way identification as stage 2
  (cosine against the test images' embeddings, both centred on the training mean, per subject);
* voxels -> pixels at the reconstructions' resolution: blurry images scored exactly like the
  reconstructions (MSE, PixCorr, SSIM, pair-wise, CLIP score and CLIP n-way identification).

A deep model that does not beat these has not yet earned its keep on that dataset.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from .data.datamodule import NSDDataModule
from .metrics.identification import n_way_top1
from .metrics.image import PixCorr
from .metrics.ridge import Ridge, best_alpha
from .metrics.scoring import comparison_grid, subject_scores
from .models.clip import FrozenClip
from .reconstruct import summarise

SPLITS = ("train", "val", "test")


def _collect(data: NSDDataModule, clip: FrozenClip) -> dict[str, dict[int, dict[str, torch.Tensor]]]:
    """``{split: {subject index: {fmri [n, V], image [n, 3, s, s] uint8, embed [n, D]}}}``."""
    out: dict = {split: defaultdict(lambda: defaultdict(list)) for split in SPLITS}
    with torch.no_grad():
        for split in SPLITS:
            for batch in data.eval_dataloader(split):
                embed = clip.image_embed(batch["image"].float() / 255)
                for subject in batch["subject"].unique().tolist():
                    rows = batch["subject"] == subject
                    part = out[split][subject]
                    part["fmri"].append(batch["fmri"][rows])
                    part["image"].append(batch["image"][rows])
                    part["embed"].append(embed[rows])
    return {
        split: {s: {k: torch.cat(v) for k, v in parts.items()} for s, parts in subjects.items()}
        for split, subjects in out.items()
    }


def _identify(pred: np.ndarray, target: torch.Tensor, mean: torch.Tensor, n_way: int) -> float:
    """n-way top-1 of predicted embeddings among the (centred) target embeddings, by cosine."""
    p = F.normalize(torch.from_numpy(pred).float() - mean, dim=-1)
    t = F.normalize(target.float() - mean, dim=-1)
    return n_way_top1(p @ t.T, torch.arange(len(t)), n_way).item()


def _images(pixels: np.ndarray, shape: torch.Size) -> torch.Tensor:
    """Predicted pixels ``[n, 3 * s * s]`` -> images ``[n, 3, s, s]`` in [0, 1]."""
    return torch.from_numpy(pixels).float().clamp(0, 1).reshape(-1, *shape)


def _pixcorr(pred: torch.Tensor, target: torch.Tensor) -> float:
    metric = PixCorr()
    metric.update(pred, target)
    return metric.compute().item()


def ridge_yardstick(
    data_dir: str, clip: FrozenClip, image_size: int, n_way: int = 50, subjects: list[str] | None = None
) -> dict:
    """Per-subject ridge decoders; returns ``{"identification", "identification_per_subject", "recon",
    "grid"}``: identification as stage 2's test figures (mean over subjects), ``recon`` shaped like
    ``lightning-fcae reconstruct``'s metrics, ``grid`` test images beside their ridge images."""
    data = NSDDataModule(data_dir, subjects=subjects, batch_size=256, num_workers=0, image_size=image_size)
    splits = _collect(data, clip)
    names = list(data.subjects)
    identification: dict[str, dict[str, float]] = {}
    recon: dict[str, dict] = {}
    counts: dict[str, int] = {}
    grid = None
    for index, name in enumerate(names):
        train, val, test = (splits[split][index] for split in SPLITS)
        ridge = Ridge(train["fmri"].double().numpy())
        val_x, test_x = (
            ridge.project(val["fmri"].double().numpy()),
            ridge.project(test["fmri"].double().numpy()),
        )
        mean = train["embed"].float().mean(0)

        # voxels -> CLIP image embedding, penalty by val identification (at most n_way ways)
        fit = ridge.fit(train["embed"].double().numpy())
        val_ways = min(n_way, len(val["embed"]))
        scores = [_identify(ridge.predict(val_x, fit, a), val["embed"], mean, val_ways) for a in ridge.alphas]
        pred = ridge.predict(test_x, fit, best_alpha(scores, ridge.alphas))
        identification[name] = {
            f"top1_{n}way": _identify(pred, test["embed"], mean, n)
            for n in sorted({2, n_way})
            if n <= len(pred)
        }

        # voxels -> pixels, penalty by val PixCorr; scored as reconstructions
        pixels = train["image"].flatten(1).double().numpy() / 255
        fit = ridge.fit(pixels)
        shape = train["image"].shape[1:]
        val_truth = val["image"].float() / 255
        scores = [_pixcorr(_images(ridge.predict(val_x, fit, a), shape), val_truth) for a in ridge.alphas]
        pred = _images(ridge.predict(test_x, fit, best_alpha(scores, ridge.alphas)), shape)
        pred = (pred * 255).round().to(torch.uint8)
        with torch.no_grad():
            embeds = clip.image_embed(pred.float() / 255), test["embed"]
        recon[name] = subject_scores(pred, test["image"], embeds, n_way)
        counts[name] = len(pred)
        if grid is None:
            grid = comparison_grid(test["image"][:16].float() / 255, pred[:16, None].float() / 255)
    ways = dict.fromkeys(k for scores in identification.values() for k in scores)
    mean = {k: float(np.mean([s[k] for s in identification.values() if k in s])) for k in ways}
    meta = {"data_dir": data_dir, "split": "test", "subjects": counts, "images": sum(counts.values())}
    return {
        "identification": mean,
        "identification_per_subject": identification,
        "recon": summarise(recon) | {"meta": meta},
        "grid": grid,
    }
