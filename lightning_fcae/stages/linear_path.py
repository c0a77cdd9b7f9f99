"""Stage 2's linear path set to the ridge yardstick: fitted on train, penalty chosen on val (``linear_path:
ridge``, beyond the paper; docs/method.md).

The fit reads the stage's own batches (z-scored, padded voxels with the cached CLIP tokens, centred as
stage 2 centres them), so what the linear path predicts at step 0 is what the ridge predicts in stage 2's
own target space, and the val score that chose the penalty is the one stage 2's validation would log for
it. Per subject: a ridge from its voxels to the leading principal directions of the training tokens
(:func:`~lightning_fcae.metrics.ridge.principal_directions`), penalty by val n-way identification of the
decoded token 0, the fMRI embedding.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from tqdm import tqdm

from ..clip_features import IMAGE_EMBED, IMAGE_TOKENS
from ..metrics.identification import n_way_top1
from ..metrics.ridge import fit_ridge_map, principal_directions
from ..models.linear_path import VoxelLinearPath


class LinearPathError(ValueError):
    """The data cannot fit a linear path (no train or val split, too few samples)."""


def _collect(data, split: str, token_mean: torch.Tensor, embed_mean: torch.Tensor) -> dict:
    """``{subject index: {fmri [n, V] float32, tokens [n, T*D] float32, embed [n, D]}}``, centred targets."""
    parts: dict = defaultdict(lambda: defaultdict(list))
    loader = data.eval_dataloader(split, every_rank_all=True)  # the same fit on every rank
    for batch in tqdm(loader, desc=f"linear path: {split}", unit="batch", leave=False):
        tokens = (batch[IMAGE_TOKENS].float() - token_mean).flatten(1)
        embed = batch[IMAGE_EMBED].float() - embed_mean
        for s in batch["subject"].unique().tolist():
            rows = batch["subject"] == s
            parts[s]["fmri"].append(batch["fmri"][rows].float())
            parts[s]["tokens"].append(tokens[rows])
            parts[s]["embed"].append(embed[rows])
    return {s: {k: torch.cat(v).numpy() for k, v in p.items()} for s, p in parts.items()}


def _identification(token0: np.ndarray, embed: np.ndarray, n_way: int) -> float:
    """Stage 2's val identification (NWayIdentification's scores): cosine of predicted token 0 against
    the centred CLIP image embeddings, exact n-way expectation."""
    p = F.normalize(torch.from_numpy(token0).float(), dim=-1)
    t = F.normalize(torch.from_numpy(embed).float(), dim=-1)
    return n_way_top1(p @ t.T, torch.arange(len(t)), n_way).item()


def fit_linear_path(
    path: VoxelLinearPath,
    data,
    token_mean: torch.Tensor,
    embed_mean: torch.Tensor,
    n_way: int,
) -> dict[str, float]:
    """Set ``path`` to the ridge of ``data`` (an NSDDataModule streaming the CLIP features) and return the
    val scores it reaches, ``{"val/top1_<n>way": mean over subjects}`` for 2 and ``n_way`` ways, as stage
    2's validation logs them: the score of the step-0 model that the stage's best checkpoint starts from."""
    for split in ("train", "val"):
        if split not in data.manifest.splits or data.num_samples(split) == 0:
            raise LinearPathError(
                f"linear_path: ridge is fitted on the train split with its penalty chosen on val; "
                f"{data.data_dir} has no {split} split: use linear_path: none"
            )
    train = _collect(data, "train", token_mean.cpu(), embed_mean.cpu())
    val = _collect(data, "val", token_mean.cpu(), embed_mean.cpu())
    tokens, dim = token_mean.shape
    basis, mean = principal_directions(
        np.concatenate([p["tokens"] for p in train.values()]), path.bias.shape[1]
    )
    rank = len(basis)
    path.set_basis(torch.zeros(path.basis.shape), torch.from_numpy(mean.reshape(tokens, dim)))
    path.basis.data[:rank] = torch.from_numpy(basis)  # a rank-deficient target leaves the rest at zero
    scores: dict[str, list[float]] = defaultdict(list)
    names = path.subjects
    for s, name in enumerate(names):
        if s not in train or s not in val:
            raise LinearPathError(
                f"linear_path: ridge needs train and val samples of {name}; the data has none"
            )
        n_val = len(val[s]["fmri"])
        ways = min(n_way, n_val)
        if ways < 2:
            raise LinearPathError(
                f"linear_path: ridge chooses its penalty on val; {name} has {n_val} val sample(s)"
            )
        voxels = int(data.subjects[name])

        def decode(coefficients: np.ndarray) -> np.ndarray:
            return coefficients @ basis[:, :dim] + mean[:dim]  # token 0 only

        fitted = fit_ridge_map(
            train[s]["fmri"][:, :voxels].astype(np.float64),
            (train[s]["tokens"] - mean) @ basis.T,
            val[s]["fmri"][:, :voxels].astype(np.float64),
            lambda pred, s=s, ways=ways: _identification(decode(pred), val[s]["embed"], ways),
        )
        weight = np.zeros((voxels, path.bias.shape[1]))
        weight[:, :rank], bias = fitted.weight, np.zeros(path.bias.shape[1])
        bias[:rank] = fitted.bias
        path.set_subject(s, torch.from_numpy(weight), torch.from_numpy(bias))
        prediction = decode(fitted.predict(val[s]["fmri"][:, :voxels].astype(np.float64)))
        for n in sorted({2, n_way}):
            if n <= n_val:
                scores[f"val/top1_{n}way"].append(_identification(prediction, val[s]["embed"], n))
        rank_zero_info(
            f"linear path {name}: ridge penalty {fitted.alpha:.3g}, val {ways}-way {fitted.val_score:.3f}"
        )
    return {k: float(np.mean(v)) for k, v in scores.items()}
