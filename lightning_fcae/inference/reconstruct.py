"""Stage-3 evaluation: reconstruct a split's images from fMRI, save them as PNGs and score them.

``lightning-fcae reconstruct --ckpt CKPT --data DIR --out OUT`` writes::

    OUT/images/{key}_{i}.png  reconstruction i < samples of sample ``key`` (e.g. subj01_nsd000012)
    OUT/truth/{key}.png       the seen image, at the reconstructions' resolution
    OUT/grid.png              truth | reconstructions of the first 8 samples of each subject
    OUT/grid.json             those samples in order (key, subject, first caption): the report's labels
    OUT/metrics.json          the metrics and the run's settings
    OUT/settings.json         what generated the PNGs: a resumed run must use the same

Runs resume: a sample whose PNGs all exist is not sampled again, its PNGs are read back. The samples of
a data batch still to do are sampled together, in one ``FMRIReconstructionPipeline`` call (a UNet batch of
``2 x samples x`` their number), but each sample's noise comes from its own generator, seeded
``seed + crc32(key)``, so its images do not depend on what else is in the batch: a resumed run writes
the images an uninterrupted one would. Same noise, that is: kernels whose order of operations changes
with the batch size (GPU, bf16 autocast) can round differently, so there a resampled PNG may differ
slightly from the one an uninterrupted run wrote; on CPU the tests find identical PNGs.

Metrics are computed on the PNGs' uint8 pixels (what a resumed run reads back), on sample 0 when
``samples > 1``: one draw per stimulus, as with ``samples=1``, so runs compare; picking the best of
several would peek at the ground truth. Every metric is computed per subject, and ``mean`` is the
unweighted mean over subjects: NSD's shared test images repeat across subjects, so in a pooled set a
"distractor" could be the very image sought.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_png, encode_png, read_file
from torchvision.utils import save_image
from tqdm import tqdm

from ..data.datamodule import NSDDataModule
from ..files import atomic
from ..files.hashing import sha256_file
from ..metrics.scoring import comparison_grid, subject_scores
from ..models.factory import CheckpointFormatError
from .reconstruction_pipeline import FMRIReconstructionPipeline, find_stage3_checkpoint
from .sampling import check_strength

if TYPE_CHECKING:
    from ..models.clip import FrozenClip  # imports open_clip: only when CLIP scores are asked for

GRID_PER_SUBJECT = 8
BLOCKS = ("raw", "pairwise", "perceptual")
CONVENTIONS = {
    "raw": "MindEye / the paper's Table 2: mean over images of MSE, pixel Pearson r and SSIM (grayscale, "
    "gaussian window) at the reconstructions' resolution; clip_score = mean cosine of CLIP image "
    "embeddings; clip_Nway = N-way identification of CLIP embeddings (exact expectation over draws)",
    "pairwise": "MinD-Vis / vis-dec: fraction of other images a reconstruction matches worse than its own "
    "(MSE, Pearson r, RGB SSIM with a 7x7 uniform window); chance 0.5",
    "perceptual": "MindEye feature metrics and LPIPS, where their weights are on disk (skipped: why not)",
    "subjects": "every metric per subject; mean = unweighted mean over subjects; metrics use sample 0",
}


class ReconstructionError(ValueError):
    """A run cannot start: not a stage-3 checkpoint, or an output folder made with other settings."""


def load_pipeline(ckpt: str | Path, ldm: str | Path | None = None) -> FMRIReconstructionPipeline:
    """The reconstruction pipeline of a stage-3 checkpoint (or run folder), on CPU; one-line errors."""
    try:
        return FMRIReconstructionPipeline.from_pretrained(ckpt, ldm=ldm)
    except CheckpointFormatError as exc:
        raise ReconstructionError(str(exc)) from exc


def sample_seed(seed: int, key: str) -> int:
    """Stable across processes and Python versions, unlike ``hash(key)``."""
    return seed + zlib.crc32(key.encode())


def to_uint8(images: Tensor) -> Tensor:
    """[0, 1] floats -> uint8, rounded as ``save_image`` does."""
    return images.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def write_png(path: Path, image: Tensor) -> None:
    """``[3, H, W]`` uint8 -> PNG, written atomically: an interrupted run never leaves a truncated PNG
    behind that a resumed run would take for a finished one."""
    atomic.write_bytes(path, encode_png(image).numpy().tobytes())


def read_png(path: Path) -> Tensor:
    return decode_png(read_file(str(path)), ImageReadMode.RGB)  # 3 H W uint8


def _reconstruct_batch(
    pipe: FMRIReconstructionPipeline,
    batch: dict,
    out: Path,
    steps: int,
    guidance: float,
    samples: int,
    seed: int,
    subjects: list[str],
    strength: float | None = None,
) -> Tensor:
    """``[b, samples, 3, H, W]`` uint8 reconstructions of a batch (``subjects``: the names its subject
    indices point to): read back for a key whose PNGs all exist; the others sampled in one call, each with
    its key's own seed, and written (with the truth PNGs). ``strength``: img2img from the pipeline's
    low-level image (None: from noise)."""
    recon: list[Tensor | None] = []
    todo = []  # rows whose PNGs are not all there
    for i, key in enumerate(batch["key"]):
        if not (out / "truth" / f"{key}.png").is_file():
            write_png(out / "truth" / f"{key}.png", batch["image"][i])
        paths = [out / "images" / f"{key}_{j}.png" for j in range(samples)]
        if all(path.is_file() for path in paths):
            recon.append(torch.stack([read_png(path) for path in paths]))
        else:
            recon.append(None)
            todo.append(i)
    if todo:
        generators = [
            torch.Generator(pipe.device).manual_seed(sample_seed(seed, batch["key"][i])) for i in todo
        ]
        # z-scored by the DataModule; the pipeline zero-pads to the encoder's length, as in training
        names = [subjects[i] for i in batch["subject"][todo].tolist()]  # rows may mix subjects
        fmri = batch["fmri"][todo]
        init = None if strength is None else {"image": pipe.lowlevel_image(fmri, names), "strength": strength}
        sampled = pipe(
            fmri, names, steps, guidance, samples, generators, output_type="pt", **(init or {})
        ).images
        images = to_uint8(sampled.cpu())  # n s 3 H W
        for i, row in zip(todo, images):
            recon[i] = row
            for j, image in enumerate(row):
                write_png(out / "images" / f"{batch['key'][i]}_{j}.png", image)
    return torch.stack(recon)


@dataclass
class _SubjectImages:
    """One subject's images (sample 0) and CLIP embeddings, collected batch by batch."""

    preds: list[Tensor] = field(default_factory=list)  # [b, 3, H, W] uint8
    truth: list[Tensor] = field(default_factory=list)
    clip_preds: list[Tensor] = field(default_factory=list)  # [b, D]
    clip_truth: list[Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(map(len, self.preds))

    def add(self, preds: Tensor, truth: Tensor, clip: FrozenClip | None, device: torch.device) -> None:
        self.preds.append(preds)
        self.truth.append(truth)
        if clip is not None:
            self.clip_preds.append(clip.image_embed(preds.to(device).float() / 255).float().cpu())
            self.clip_truth.append(clip.image_embed(truth.to(device).float() / 255).float().cpu())

    def scores(self, n_way: int, device: torch.device) -> dict:
        preds, truth = (torch.cat(x).to(device) for x in (self.preds, self.truth))
        clip = (torch.cat(self.clip_preds), torch.cat(self.clip_truth)) if self.clip_preds else None
        return subject_scores(preds, truth, clip, n_way)


def _check_settings(out: Path, settings: dict) -> None:
    """Resuming with other settings would mix two runs' images in one evaluation: refuse it."""
    path = out / "settings.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != settings:
            changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
            raise ReconstructionError(
                f"{out} holds reconstructions made with other settings (was, now): {changed}; "
                "use another --out, or the same settings to resume"
            )
    atomic.write_text(path, json.dumps(settings, indent=2))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarise(per_subject: dict[str, dict]) -> dict:
    """Per-subject blocks -> ``{block: {mean, per_subject, skipped?}}``."""
    summary = {}
    for block in BLOCKS:
        values = {s: blocks[block][0] for s, blocks in per_subject.items()}
        names = dict.fromkeys(name for v in values.values() for name in v)
        mean = {n: _mean([v[n] for v in values.values() if n in v]) for n in names}
        summary[block] = {"mean": mean, "per_subject": values}
        skipped = {k: v for blocks in per_subject.values() for k, v in blocks[block][1].items()}
        if skipped:
            summary[block]["skipped"] = skipped
    return summary


def reconstruct_split(
    ckpt: str | Path,
    data_dir: str | Path,
    split: str = "test",
    out: str | Path = "reconstructions",
    steps: int | None = None,
    guidance: float | None = None,
    samples: int = 1,
    batch_size: int = 16,
    seed: int = 0,
    subjects: list[str] | None = None,
    clip_model: str | None = None,
    clip_pretrained: str | None = None,
    n_way: int = 50,
    device: str | None = None,
    progress: bool = True,
    ldm: str | Path | None = None,
    init: str = "noise",
    strength: float | None = None,
) -> dict:
    """Reconstruct ``split`` (repeats averaged) into ``out`` and return the metrics written to
    ``out/metrics.json`` (see the module doc). ``clip_model`` (+ ``clip_pretrained``, a local file or
    open_clip tag) adds the CLIP scores; ``batch_size`` is how many fMRI samples are read, sampled and
    CLIP-embedded at a time (the UNet runs on up to ``2 x samples x batch_size`` latents). ``steps`` and
    ``guidance`` default to the checkpoint's ``sample_steps`` and ``guidance_scale``. ``ckpt`` is a stage-3
    checkpoint or a run folder; ``ldm`` the frozen LDM's folder when it is no longer where the checkpoint
    recorded it. ``init="lowlevel"`` starts each sample img2img from the checkpoint's low-level image at
    ``strength`` (chosen on val, never on test)."""
    out = Path(out)
    if init == "lowlevel" and strength is None:
        raise ReconstructionError(
            "--init lowlevel needs --strength (choose it on the val split, never on test)"
        )
    if init == "noise" and strength not in (None, 1.0):
        raise ReconstructionError(
            f"--strength {strength} needs --init lowlevel (from noise the strength is 1.0)"
        )
    if strength is not None:
        check_strength(strength)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = load_pipeline(ckpt, ldm).to(device)
    if init == "lowlevel" and pipe.lowlevel is None:
        raise ReconstructionError(
            f"{ckpt} has no low-level decoder for --init lowlevel: train stage 3 with model.init_args.lowlevel: ridge"
        )
    steps = steps or pipe.config.num_inference_steps
    guidance = pipe.config.guidance_scale if guidance is None else guidance
    data = NSDDataModule(
        str(data_dir),
        subjects=subjects,
        batch_size=batch_size,
        num_workers=0,
        patch_size=pipe.fmri_encoder.aligner.encoder.patch_size,
        image_size=pipe.image_size,  # truth at the reconstructions' size
    )
    if data.num_voxels > pipe.fmri_encoder.num_voxels:
        raise ReconstructionError(
            f"the data has {data.num_voxels} (padded) voxels, the model takes {pipe.fmri_encoder.num_voxels}"
        )
    clip = None
    if clip_model:
        from ..models.clip import load_clip

        clip = load_clip(clip_model, clip_pretrained).to(device)
    # what the PNGs depend on; checked once the inputs are known to be usable
    # the checkpoint by content: a retrained stage 3 replaces last.ckpt at the same path
    ckpt_file = find_stage3_checkpoint(ckpt)  # a run folder names its stage-3 checkpoint
    settings = dict(ckpt=str(ckpt_file.resolve()), ckpt_sha256=sha256_file(ckpt_file), split=split)
    settings |= dict(steps=steps, guidance=guidance)
    if init == "lowlevel":  # recorded only when used: older folders made from noise resume as before
        settings |= dict(init=init, strength=strength)
    settings |= dict(samples=samples, seed=seed)
    # the data by content too: other fMRI under the same keys must not reuse these PNGs (the manifest
    # holds every shard's and the norm stats' sha256)
    settings |= dict(data_sha256=hashlib.sha256(data.manifest.to_json().encode()).hexdigest())
    _check_settings(out, settings)
    for folder in ("images", "truth"):
        (out / folder).mkdir(exist_ok=True)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    collected = {name: _SubjectImages() for name in data.subjects}
    grid: dict[int, list[tuple[Tensor, Tensor, dict]]] = {}  # subject -> (truth, recon [s], label)
    bar = tqdm(total=data.num_samples(split), desc=f"reconstruct {split}", unit="img", disable=not progress)
    for batch in data.eval_dataloader(split):
        with autocast, torch.no_grad():
            recon = _reconstruct_batch(
                pipe,
                batch,
                out,
                steps,
                guidance,
                samples,
                seed,
                list(data.subjects),
                strength if init == "lowlevel" else None,
            )
            for index, images in enumerate(collected.values()):
                rows = batch["subject"] == index
                if rows.any():
                    images.add(recon[rows, 0], batch["image"][rows], clip, device)
        _pick_for_grid(grid, batch, recon, list(data.subjects))
        bar.update(len(recon))
    bar.close()
    write_grid(grid, out, samples)
    per_subject = {name: images.scores(n_way, device) for name, images in collected.items() if len(images)}
    counts = {name: len(collected[name]) for name in per_subject}
    metrics = summarise(per_subject)
    metrics["meta"] = settings | dict(
        data_dir=str(data_dir),
        subjects=counts,
        images=sum(counts.values()),
        metrics_on_sample=0,
        clip_model=clip_model,
        clip_pretrained=clip_pretrained,
        conventions=CONVENTIONS,
    )
    atomic.write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def _pick_for_grid(grid: dict, batch: dict, recon: Tensor, subjects: list[str]) -> None:
    """Keep the first :data:`GRID_PER_SUBJECT` samples of every subject for the grid, with the labels
    the report shows under them: a grid of one subject's images says nothing about the others."""
    for row, index in enumerate(batch["subject"].tolist()):
        picked = grid.setdefault(index, [])
        if len(picked) < GRID_PER_SUBJECT:
            label = {
                "key": batch["key"][row],
                "subject": subjects[index],
                "caption": batch["captions"][row][0],
            }
            picked.append((batch["image"][row], recon[row], label))


def write_grid(grid: dict, out: Path, samples: int) -> None:
    """``grid.png`` (each seen image, then its reconstructions) and ``grid.json`` (which samples, in
    that order, with their captions, so the report can label every tile). ``grid``: ``{subject index: [(seen
    image uint8 [3, H, W], reconstructions uint8 [s, 3, H, W], {key, subject, caption})]}``; the ridge
    yardstick writes its images the same way."""
    entries = [entry for index in sorted(grid) for entry in grid[index]]
    truth, recon = (torch.stack(x).float() / 255 for x in list(zip(*entries))[:2])  # n 3 H W, n s 3 H W
    with atomic.atomic_file(out / "grid.png") as f:
        save_image(comparison_grid(truth, recon), f, format="png")
    rows = [label for *_, label in entries]
    atomic.write_text(out / "grid.json", json.dumps({"samples": samples, "rows": rows}, indent=2))


def format_metrics(metrics: dict) -> str:
    """A plain-text table: block, metric, mean over subjects, then one column per subject."""
    subjects = list(metrics["meta"]["subjects"])
    lines = [f"{'block':<11}{'metric':<16}{'mean':>9}" + "".join(f"{s:>10}" for s in subjects)]
    for block in BLOCKS:
        for name, mean in metrics[block]["mean"].items():
            per = [metrics[block]["per_subject"][s].get(name) for s in subjects]
            cells = "".join(f"{v:>10.4f}" if v is not None else f"{'-':>10}" for v in per)
            lines.append(f"{block:<11}{name:<16}{mean:>9.4f}{cells}")
        if metrics[block].get("skipped"):
            lines.append(f"{block:<11}skipped: {', '.join(metrics[block]['skipped'])}")
    return "\n".join(lines)
