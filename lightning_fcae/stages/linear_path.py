"""Linear maps from voxels set to the ridge yardstick (beyond the paper; docs/method.md): stage 2's linear
path to CLIP's tokens (``linear_path: ridge``) and stage 3's low-level decoder to pixels (``lowlevel:
ridge``), each fitted on train with its penalty chosen on val, per subject.

A fit reads the stage's own batches (z-scored, padded voxels; stage 2's centred CLIP tokens, stage 3's
images), so a map predicts what the ridge predicts in the stage's own target space, and the val score
that chose the penalty is the one the stage's validation would log for it. Each subject's ridge maps to
the leading principal directions of all training targets (:func:`~lightning_fcae.metrics.ridge.
principal_directions`, shared by the subjects) with :func:`~lightning_fcae.metrics.ridge.fit_ridge_map`,
the yardstick's fit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from tqdm import tqdm

from ..metrics.identification import n_way_top1
from ..metrics.image import PixCorr
from ..metrics.ridge import fit_ridge_map, principal_directions
from ..models.linear_path import VoxelLinearMap
from .clip_features import IMAGE_EMBED, IMAGE_TOKENS

Split = dict[int, dict[str, np.ndarray]]  # subject index -> {"fmri" [n, V], "target" [n, K], ...}


class LinearPathError(ValueError):
    """The data cannot fit a map from voxels (no train or val split, too few samples of a subject)."""


def collect(data, split: str, fields: Callable[[dict], dict[str, torch.Tensor]], option: str) -> Split:
    """Per subject, the split's ``fmri`` and ``fields(batch)`` (each ``[b, ...]``, flattened), every sample
    on every rank (a closed-form fit that each rank makes alike)."""
    if split not in data.manifest.splits or data.num_samples(split) == 0:
        raise LinearPathError(
            f"{option} is fitted on the train split with its penalty chosen on val; {data.data_dir} has no "
            f"{split} split: set {option.split(':')[0]}: none"
        )
    parts: dict = defaultdict(lambda: defaultdict(list))
    for batch in tqdm(
        data.eval_dataloader(split, every_rank_all=True), desc=f"{option}: {split}", leave=False
    ):
        values = {"fmri": batch["fmri"].float(), **fields(batch)}
        for s in batch["subject"].unique().tolist():
            rows = batch["subject"] == s
            for name, value in values.items():
                parts[s][name].append(value[rows].flatten(1))
    return {s: {k: torch.cat(v).numpy() for k, v in p.items()} for s, p in parts.items()}


def fit_map(
    linear: VoxelLinearMap,
    data,
    train: Split,
    val: Split,
    score: Callable[[int, np.ndarray], float],
    option: str,
) -> dict[int, np.ndarray]:
    """Set ``linear`` to per-subject ridges from voxels to the principal directions of ``train``'s
    ``target``, each penalty by ``score(subject, decoded val predictions [m, K])`` (higher is better);
    returns each subject's decoded val predictions."""
    # the directions from at most ~8192 evenly spaced training rows, taken per subject before concatenating
    # (a copy of all of NSD's four subjects' 50 x 512 tokens would be 3.6 GB more)
    total = sum(len(p["target"]) for p in train.values())
    step = max(1, -(-total // 8192))
    rows = np.concatenate([p["target"][::step] for p in train.values()]).astype(np.float32)
    basis, mean = principal_directions(rows, linear.rank)
    linear.set_basis(torch.from_numpy(basis), torch.from_numpy(mean))
    predictions = {}
    for s, name in enumerate(linear.subjects):
        if s not in train or s not in val:
            raise LinearPathError(f"{option} needs train and val samples of {name}; the data has none")
        voxels = int(data.subjects[name])
        train_x, val_x = (split[s]["fmri"][:, :voxels].astype(np.float64) for split in (train, val))
        fitted = fit_ridge_map(
            train_x,
            (train[s]["target"] - mean) @ basis.T,
            val_x,
            lambda coefficients, s=s: score(s, coefficients @ basis + mean),
        )
        linear.set_subject(s, torch.from_numpy(fitted.weight), torch.from_numpy(fitted.bias))
        predictions[s] = fitted.predict(val_x) @ basis + mean
        rank_zero_info(f"{option} {name}: ridge penalty {fitted.alpha:.3g}, val score {fitted.val_score:.3f}")
    return predictions


def _identification(token0: np.ndarray, embed: np.ndarray, n_way: int) -> float:
    """Stage 2's val identification (NWayIdentification's scores): cosine of predicted token 0 against
    the centred CLIP image embeddings, exact n-way expectation."""
    p = F.normalize(torch.from_numpy(token0).float(), dim=-1)
    t = F.normalize(torch.from_numpy(embed).float(), dim=-1)
    return n_way_top1(p @ t.T, torch.arange(len(t)), n_way).item()


def fit_linear_path(
    path: VoxelLinearMap, data, token_mean: torch.Tensor, embed_mean: torch.Tensor, n_way: int
) -> dict[str, float]:
    """Set stage 2's ``path`` to the ridge of ``data`` (an NSDDataModule streaming the CLIP features) to the
    centred CLIP tokens, penalty by val identification of token 0 (the fMRI embedding). Returns the val
    scores it reaches, ``{"val/top1_<n>way": mean over subjects}`` for 2 and ``n_way`` ways, as stage 2's
    validation logs them: the score of the step-0 model that the stage's best checkpoint starts from."""
    option = "linear_path: ridge"
    token_mean, embed_mean = token_mean.cpu(), embed_mean.cpu()

    def fields(batch: dict) -> dict[str, torch.Tensor]:
        return {
            "target": batch[IMAGE_TOKENS].float() - token_mean,
            "embed": batch[IMAGE_EMBED].float() - embed_mean,
        }

    train, val = collect(data, "train", fields, option), collect(data, "val", fields, option)
    dim = token_mean.shape[-1]
    for s, name in enumerate(path.subjects):
        if s in val and len(val[s]["fmri"]) < 2:
            raise LinearPathError(
                f"{option} chooses its penalty on val; {name} has {len(val[s]['fmri'])} val sample"
            )

    def score(s: int, tokens: np.ndarray) -> float:
        return _identification(tokens[:, :dim], val[s]["embed"], min(n_way, len(tokens)))

    predictions = fit_map(path, data, train, val, score, option)
    scores: dict[str, list[float]] = defaultdict(list)
    for s, tokens in predictions.items():
        for n in sorted({2, n_way}):
            if n <= len(tokens):
                scores[f"val/top1_{n}way"].append(_identification(tokens[:, :dim], val[s]["embed"], n))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def fit_lowlevel(linear: VoxelLinearMap, data) -> float:
    """Set stage 3's low-level ``linear`` map to the ridge of ``data``'s images (``[3, s, s]`` in [0, 1],
    ``s`` the map's size) on voxels, penalty by val PixCorr as the yardstick chooses it; returns that val
    PixCorr, the mean over subjects."""
    option = "lowlevel: ridge"
    size = linear.out_shape[-1]

    def fields(batch: dict) -> dict[str, torch.Tensor]:
        images = batch["image"].float() / 255  # uint8 from the loader, not yet moved by the trainer
        return {"target": F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)}

    train, val = collect(data, "train", fields, option), collect(data, "val", fields, option)

    def score(s: int, pixels: np.ndarray) -> float:
        metric = PixCorr()
        shape = (-1, 3, size, size)
        metric.update(
            torch.from_numpy(pixels).float().clamp(0, 1).view(shape),
            torch.from_numpy(val[s]["target"]).view(shape),
        )
        return metric.compute().item()

    predictions = fit_map(linear, data, train, val, score, option)
    return float(np.mean([score(s, pixels) for s, pixels in predictions.items()]))
