"""The ridge yardstick: what a closed-form linear decoder from voxels reaches in the method's own scores.

Beside every deep figure the pipeline puts this one (seconds on a CPU), fitted per subject on train with
its penalty chosen on val, scored on test:

* voxels -> CLIP's image tokens in stage 2's own target space (the CLIP feature cache, centred on the
  training means), its token 0 scored by stage 2's n-way identification: the very fit that stage 2's
  ``linear_path: ridge`` starts from (:func:`~lightning_fcae.stages.linear_path.fit_linear_path`);
* voxels -> pixels at the reconstructions' resolution: blurry images scored exactly like the
  reconstructions (MSE, PixCorr, SSIM, pair-wise, CLIP score and CLIP n-way identification).

A deep model that does not beat these has not yet earned its keep on that dataset.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datamodule import NSDDataModule
from ..inference.reconstruct import GRID_PER_SUBJECT, summarise
from ..metrics.identification import n_way_top1
from ..metrics.scoring import subject_scores
from ..models.clip import FrozenClip
from ..models.linear_path import LowLevelDecoder, VoxelLinearMap
from ..stages.clip_features import IMAGE_EMBED, ClipFeatureLookup, ensure_clip_cache, train_means
from ..stages.linear_path import fit_linear_path, fit_lowlevel


def _test_split(data: NSDDataModule, clip: FrozenClip) -> dict[int, dict]:
    """``{subject index: {fmri [n, V], image [n, 3, s, s] uint8, embed [n, D], key [n], caption [n]}}`` of
    the test split, with the CLIP embeddings its reconstructions are scored against."""
    out: dict = defaultdict(lambda: defaultdict(list))
    with torch.no_grad():
        for batch in data.eval_dataloader("test"):
            embed = clip.image_embed(batch["image"].float() / 255)
            for subject in batch["subject"].unique().tolist():
                rows = batch["subject"] == subject
                for key, value in (("fmri", batch["fmri"]), ("image", batch["image"]), ("embed", embed)):
                    out[subject][key].append(value[rows])
                for i in rows.nonzero().flatten().tolist():
                    out[subject]["key"].append(batch["key"][i])
                    out[subject]["caption"].append(batch["captions"][i][0])
    return {
        s: {k: v if k in ("key", "caption") else torch.cat(v) for k, v in parts.items()}
        for s, parts in out.items()
    }


def stage2_identification(
    data_dir: str, clip_model: str, clip_pretrained: str | None, n_way: int, rank: int, subjects=None
) -> dict[str, dict[str, float]]:
    """Per subject, test ``{"top1_<n>way"}`` of the ridge from voxels to CLIP's tokens in stage 2's target
    space (2 and ``n_way`` ways): the linear path stage 2 starts from, fitted the same way."""
    data = NSDDataModule(data_dir, subjects=subjects, batch_size=256, num_workers=0, with_images=False)
    cache = ensure_clip_cache(data_dir, clip_model, clip_pretrained)
    data.stream_image_features(ClipFeatureLookup(cache))
    means = train_means(cache)
    tokens, dim = means["image_tokens"].shape
    path = VoxelLinearMap(list(data.subjects), data.num_voxels, rank, [tokens, dim])
    fit_linear_path(path, data, means["image_tokens"], means["image_embed"], n_way)
    predicted: dict = defaultdict(list)
    targets: dict = defaultdict(list)
    with torch.no_grad():
        for batch in data.eval_dataloader("test"):
            token0 = path(batch["fmri"], batch["subject"])[:, 0]
            for s in batch["subject"].unique().tolist():
                rows = batch["subject"] == s
                predicted[s].append(token0[rows])
                targets[s].append(batch[IMAGE_EMBED][rows] - means["image_embed"])
    scores = {}
    for s, name in enumerate(data.subjects):
        p, t = F.normalize(torch.cat(predicted[s]), dim=-1), F.normalize(torch.cat(targets[s]), dim=-1)
        scores[name] = {
            f"top1_{n}way": n_way_top1(p @ t.T, torch.arange(len(t)), n).item()
            for n in sorted({2, n_way})
            if n <= len(t)
        }
    return scores


def ridge_yardstick(
    data_dir: str,
    clip: FrozenClip,
    image_size: int,
    n_way: int = 50,
    subjects: list[str] | None = None,
    rank: int = 128,
    pixel_rank: int = 256,
) -> dict:
    """Per-subject ridge decoders; returns ``{"identification", "identification_per_subject", "recon",
    "grid"}`` (``grid``: the ridge's images of the first test samples of each subject, in
    :func:`~lightning_fcae.reconstruct.write_grid`'s form): identification as stage 2's test figures (mean over subjects; ``rank``: the principal
    directions of CLIP's tokens, as stage 2's ``linear_rank``), ``recon`` shaped like ``lightning-fcae
    reconstruct``'s metrics (``pixel_rank``: the principal directions of the images, as stage 3's
    ``lowlevel_rank``: its images are those ``lowlevel: ridge`` starts img2img from), ``grid`` test
    images beside their ridge images."""
    identification = stage2_identification(data_dir, clip.model_name, clip.pretrained, n_way, rank, subjects)
    # voxels -> pixels at the reconstructions' size, penalty by val PixCorr: the low-level decoder's fit
    data = NSDDataModule(data_dir, subjects=subjects, batch_size=256, num_workers=0, image_size=image_size)
    pixels = LowLevelDecoder(list(data.subjects), data.num_voxels, pixel_rank, image_size)
    fit_lowlevel(pixels.map, data)
    test = _test_split(data, clip)
    recon: dict[str, dict] = {}
    counts: dict[str, int] = {}
    grid: dict[int, list] = {}  # the first test samples of each subject, as reconstruct picks its grid
    for index, name in enumerate(data.subjects):
        part = test[index]
        with torch.no_grad():
            pred = pixels(part["fmri"], torch.full((len(part["fmri"]),), index))
            pred = (pred * 255).round().to(torch.uint8)
            embeds = clip.image_embed(pred.float() / 255), part["embed"]
        recon[name] = subject_scores(pred, part["image"], embeds, n_way)
        counts[name] = len(pred)
        grid[index] = [
            (part["image"][i], pred[i : i + 1], {"key": key, "subject": name, "caption": part["caption"][i]})
            for i, key in enumerate(part["key"][:GRID_PER_SUBJECT])
        ]
    ways = dict.fromkeys(k for scores in identification.values() for k in scores)
    mean = {k: float(np.mean([s[k] for s in identification.values() if k in s])) for k in ways}
    meta = {"data_dir": data_dir, "split": "test", "subjects": counts, "images": sum(counts.values())}
    return {
        "identification": mean,
        "identification_per_subject": identification,
        "recon": summarise(recon) | {"meta": meta},
        "grid": grid,
    }
