"""The preflight's check of free disk: a rough upper bound of the checkpoints a run keeps, and the CLIP
feature cache it builds beside the data, against the free space of their file systems."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .preflight_findings import Findings, init_args, model_arg
from .tasks import is_checkpoint_callback

if TYPE_CHECKING:
    from ..data.schema import Manifest
    from .preflight_weights import ClipGrid, LdmShape
    from .tasks import Run, Task


# A checkpoint holds every parameter in fp32 and, for the trained ones, AdamW's two fp32 moments.
BYTES_TRAINED = 12


def fmri_parameters(config: dict, manifest: Manifest) -> int:
    """Parameters of a stage-1 model (its LightningModule built on the meta device: no memory, no time)."""
    from ..data.transforms import padded_length
    from ..models.sizes import DecoderConfig, EncoderConfig, RegressorConfig

    sizes = {"encoder": EncoderConfig, "regressor": RegressorConfig, "decoder": DecoderConfig}
    args = {
        k: sizes[k](**v) if k in sizes and isinstance(v, dict) else v for k, v in init_args(config).items()
    }
    patch = init_args(config, "data").get("patch_size", 16)
    module, name = config["model"]["class_path"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    with torch.device("meta"):
        model = cls(num_voxels=padded_length(max(manifest.subjects.values()), patch), **args)
    return sum(p.numel() for p in model.parameters())


def clip_parameters(config: dict) -> int:
    """Parameters of the CLIP stand-in this run trains, built on the meta device from its open_clip
    config (``open_clip.create_model`` moves models to a device, which meta tensors refuse)."""
    import open_clip

    cfg = dict(open_clip.get_model_config(model_arg(config, "architecture")))
    cls = open_clip.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.CLIP
    with torch.device("meta"):
        model = cls(**cfg)
    return sum(p.numel() for p in model.parameters())


def keeps(config: dict) -> int:
    """Checkpoint files a stage keeps: its checkpoint callbacks' save_top_k (-1: one per epoch), and one
    for a ``BestCheckpoint`` (stage 2's best.ckpt)."""
    files = 0
    for callback in (config.get("trainer") or {}).get("callbacks") or []:
        if callback["class_path"].endswith("BestCheckpoint"):
            files += 1
        elif is_checkpoint_callback(callback):
            top_k = (callback.get("init_args") or {}).get("save_top_k", 1)
            files += max(int(config["trainer"].get("max_epochs") or 1), 1) if top_k == -1 else top_k
    return files


def checkpoint_bytes(
    findings: Findings,
    fits: list[Task],
    configs: dict[tuple[str, str], dict],
    manifest: Manifest,
    ldm: LdmShape | None,
) -> int:
    """A rough upper bound of the checkpoint bytes the run writes: per stage, 12 bytes per trained
    parameter (fp32 weight + AdamW's two moments), times the files it keeps, plus the largest once more
    (Lightning writes an epoch's file before deleting the previous one). Stages done already count
    nothing. Parameter counts: stage 1 as built; its image phase and stage 2 as stage 1 (the decoder goes,
    a token map comes); stage 3 stage 1's plus the UNet's cross-attention layers (its checkpoints leave
    the frozen LDM to its folder). At the paper's sizes: 1.3 GB for stage 1 (1.3 GB measured) and about
    1.4 GB for stage 3."""
    sizes, fmri, counted = [], 0, {}  # counted: stage-1 config file -> parameters, built once
    seen = set()  # a stage 1 that methods share is one run
    for fit in fits:
        config = configs.get((fit.stage, fit.config_file))
        if config is None:  # it did not load: reported already
            continue
        if fit.stage == "stage1":
            if fit.config_file not in counted:
                counted[fit.config_file] = 0
                with findings.check(f"stages.stage1 ({fit.config_file})"):  # its constructor's refusals
                    counted[fit.config_file] = fmri_parameters(config, manifest)
            fmri = counted[fit.config_file]
        if (fit.stage_dir / "done-fit.json").is_file() or fit.stage_dir in seen:
            continue
        seen.add(fit.stage_dir)
        if fit.stage in ("stage1", "stage1_image", "stage2"):
            size = BYTES_TRAINED * fmri
        elif fit.stage == "stage3":
            size = BYTES_TRAINED * (
                fmri + (ldm.finetuned if ldm else 0)
            )  # the frozen LDM stays in its folder
        elif fit.stage == "clip_pretrain":
            size = BYTES_TRAINED * clip_parameters(config)
        else:  # ldm_vq, ldm_unet: the whole stand-in LDM as trained (an upper bound)
            size = BYTES_TRAINED * (ldm.parameters if ldm else 0)
        sizes.append(size * keeps(config))
    return sum(sizes) + max(sizes, default=0)


def check_disk(
    findings: Findings,
    run: Run,
    fits: list[Task],
    configs: dict[tuple[str, str], dict],
    manifest: Manifest,
    ldm: LdmShape | None,
    clip: ClipGrid | None = None,
) -> None:
    """The checkpoints' estimated bytes, and the CLIP feature cache the run builds beside the data (stage 2,
    vis-dec's image phase and the LDM stand-in read it), against the free space of their file systems."""
    need = checkpoint_bytes(findings, fits, configs, manifest, ldm)
    cache = clip_cache_bytes(run, fits, manifest, clip)
    if cache and Path(run.data_dir).exists() and disk_of(Path(run.data_dir)) != disk_of(run.out):
        check_free(findings, Path(run.data_dir), cache, "the CLIP feature cache beside the data")
        cache = 0
    check_free(
        findings,
        run.out,
        need + cache,
        "the run's checkpoints" + (" and the CLIP feature cache" if cache else ""),
    )


def disk_of(path: Path) -> int:
    """The device id of the file system ``path`` (or its nearest existing parent) lies on."""
    while not path.exists():
        path = path.parent
    return os.stat(path).st_dev


def clip_cache_bytes(run: Run, fits: list[Task], manifest: Manifest, clip: ClipGrid | None) -> int:
    """float16 CLIP features per image (T x D tokens, image and caption embeddings) for every sample of
    the data (an upper bound: images seen by several subjects are cached once), when a fit reads them and
    this CLIP's cache is not built yet; 0 otherwise."""
    readers = {"stage2", "stage1_image", "ldm_unet"}
    if clip is None or not any(fit.stage in readers for fit in fits) or "://" in run.data_dir:
        return 0
    given = run.given_clip()
    if given is not None:
        from ..stages.clip_features import cache_status, clip_cache_id

        with contextlib.suppress(Exception):  # weights that do not load are reported elsewhere
            if cache_status(run.data_dir, clip_cache_id(*given)) == "hit":
                return 0
    images = sum(split.samples for split in manifest.splits.values())
    return 2 * images * (clip.tokens * clip.dim + 2 * clip.dim)


def check_free(findings: Findings, path: Path, need: int, what: str) -> None:
    """``need`` bytes of ``what`` against the free space of ``path``'s file system."""
    where = path
    while not where.exists():  # the run folder may not exist yet: its file system is its parent's
        where = where.parent
    free = shutil.disk_usage(where).free
    line = (
        f"disk: {what} need about {need / 1e9:.2f} GB (rough: 12 bytes per trained parameter, per kept "
        f"checkpoint; 2 bytes per cached CLIP feature), {free / 1e9:.1f} GB free under {where}"
    )
    if need > free:
        findings.problems.append(line + ": free space or use another --out")
    else:
        findings.verified.append(line)
