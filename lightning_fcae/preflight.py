"""The pipeline's preflight: what a run needs, checked in seconds before hours of training.

``lightning-fcae pipeline --check`` prints one line per problem (exit 2) or a short summary (exit 0), and
every real run makes the same checks before its first stage starts: without them a missing CLIP file
surfaced only when stage 2 started, after stage 1's 100 epochs. What is checked:

* the dataset: its manifest, every shard's size (and sha256 while the shards total at most
  :data:`HASH_BUDGET` bytes, so that the check stays in seconds), the norm stats (sha256, shapes, values);
* the weights the plan names: shipped stand-ins against their manifest's hashes; the CLIP file or tag
  loads through open_clip, the LDM folder through diffusers. Weights the plan trains itself (the
  stand-ins, when it names neither real weights nor ``stand_ins``) and earlier stages' checkpoints are
  outputs of the run, not missing inputs;
* shapes that must agree between stages: CLIP's token grid ``T x D`` with every ``clip_tokens`` /
  ``clip_dim``, the LDM's image size with stage 3's, a model's ``image_size`` with its data's;
* the accelerator, devices and precision every stage asks for exist here (Lightning's own Trainer checks);
* free disk under the run folder for the checkpoints the run keeps (:func:`checkpoint_bytes`, rough).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .data.schema import DatasetError
from .plan import PlanError

if TYPE_CHECKING:
    from .data.schema import Manifest
    from .pipeline import Pipeline, Task

# sha256 reads every byte (of the order of a second per GB on one core): beyond this the shards' sizes are checked and
# `lightning-fcae data inspect --verify` is named for their hashes.
HASH_BUDGET = 2**30
# A checkpoint holds every parameter in fp32 and, for the trained ones, AdamW's two fp32 moments.
BYTES_TRAINED = 12


class PreflightError(PlanError):
    """A real run refused before its first stage: the preflight's problems, one a line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            f"the preflight found {len(problems)} problem(s), nothing was run:\n"
            + "\n".join(f"  {line}" for line in problems)
        )


@dataclasses.dataclass
class Findings:
    """Problems (each one line) and what was verified (the summary of a clean preflight)."""

    problems: list[str] = dataclasses.field(default_factory=list)
    verified: list[str] = dataclasses.field(default_factory=list)

    @contextmanager
    def check(self, what: str) -> Iterator[None]:
        """Run a check; a named failure of what it loads becomes the problem line ``what: message``.

        Loaders raise what they raise (dataset errors, missing files, open_clip / diffusers / Lightning
        refusals): all of them are reasons the run would fail, and each is reported, not raised, so that
        one pass names every problem.
        """
        from lightning.pytorch.utilities.exceptions import MisconfigurationException

        try:
            yield
        except (DatasetError, OSError, ValueError, RuntimeError, MisconfigurationException) as exc:
            self.problems.append(f"{what}: {' '.join(str(exc).split())}")


@dataclasses.dataclass(frozen=True)
class ClipGrid:
    """CLIP's image tokens ``T x D`` and where they come from (for messages)."""

    tokens: int
    dim: int
    source: str


@dataclasses.dataclass(frozen=True)
class LdmShape:
    """What stage 3 must agree with: the LDM's native image side and, for an LDM pretrained on CLIP
    features, its condition's token grid."""

    image_size: int
    grid: tuple[int, int] | None
    source: str
    parameters: int
    finetuned: int  # what stage 3 trains in the UNet (cross-attention; + the new time-embedding input)


def init_args(config: dict, section: str = "model") -> dict:
    return (config.get(section) or {}).get("init_args") or {}


def class_defaults(class_path: str) -> dict:
    """The ``__init__`` defaults of a LightningCLI ``class_path``: what a config leaves unset."""
    module, name = class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def model_arg(config: dict, key: str):
    """A model init argument as the stage will see it: the config's value, else the class default."""
    args = init_args(config)
    return args[key] if key in args else class_defaults(config["model"]["class_path"]).get(key)


# --- the dataset ------------------------------------------------------------------------------------
def check_dataset(findings: Findings, data_dir: str) -> Manifest | None:
    """Manifest, shard sizes (and sha256 within :data:`HASH_BUDGET`), norm stats; the manifest or None."""
    from .data.datamodule import is_local, read_manifest
    from .data.shards import check_shard_file, load_norm_stats

    manifest = None
    with findings.check(f"dataset {data_dir}"):
        manifest = read_manifest(data_dir)
        load_norm_stats(data_dir, manifest)  # NormStatsError: hash, shapes, NaN, std <= 0
        shards = [shard for split in manifest.splits.values() for shard in split.shards]
        if not is_local(data_dir):
            findings.verified.append(f"dataset {data_dir}: manifest and norm stats (remote shards unchecked)")
            return manifest
        total = sum(shard.bytes for shard in shards)
        verify = total <= HASH_BUDGET
        for shard in shards:
            check_shard_file(Path(data_dir) / shard.path, shard, verify=verify)
        how = (
            "sizes and sha256"
            if verify
            else f"sizes (sha256: `lightning-fcae data inspect --verify {data_dir}`)"
        )
        findings.verified.append(
            f"dataset {data_dir}: manifest, norm stats, {len(shards)} shards' {how} ({total / 1e9:.2f} GB)"
        )
    return manifest


# --- the weights ------------------------------------------------------------------------------------
def clip_grid_of_architecture(name: str) -> ClipGrid:
    """The token grid of an open_clip architecture from its config, without building it."""
    from .models.clip import clip_token_grid

    return ClipGrid(*clip_token_grid(name), f"{name} (trained by this run)")


def load_clip_grid(findings: Findings, model: str, weights: str) -> ClipGrid | None:
    """Load the CLIP the stages will load (open_clip) and return its token grid. When it does not load,
    the problem is recorded and the grid comes from the architecture's config, so that the shape
    checks still run: a missing file and a clip_tokens mismatch are both named in one pass."""
    from .models.clip import load_clip

    with findings.check(f"CLIP {model} / {weights}"):
        clip = load_clip(model, weights)
        grid = ClipGrid(clip.num_tokens, clip.embed_dim, f"{model} / {weights}")
        findings.verified.append(f"CLIP {grid.source}: loads, {grid.tokens} x {grid.dim} image tokens")
        return grid
    try:
        return dataclasses.replace(clip_grid_of_architecture(model), source=model)
    except ValueError:  # an unknown architecture: load_clip said so already
        return None


def ldm_shape(ldm, source: str) -> LdmShape:
    """Native side = the UNet's latent side x the VQ's downsampling; grid of its condition, if any."""
    from .models.ldm import cross_attention_parameters, vq_downsampling

    grid = None
    if ldm.condition is not None:
        grid = (ldm.condition.config.clip_tokens, ldm.condition.config.clip_dim)
    size = ldm.unet.config.sample_size * vq_downsampling(ldm.vq)
    parameters = sum(p.numel() for part in (ldm.unet, ldm.vq) for p in part.parameters())
    finetuned = sum(p.numel() for p in cross_attention_parameters(ldm.unet).values())
    return LdmShape(size, grid, source, parameters, finetuned)


def load_ldm_shape(findings: Findings, path: str) -> LdmShape | None:
    """Load the LDM folder stage 3 will load (diffusers); its shape, or None after a problem."""
    from .models.ldm import load_ldm

    with findings.check(f"LDM {path}"):
        shape = ldm_shape(load_ldm(path), path)
        findings.verified.append(f"LDM {path}: loads, {shape.image_size} px")
        return shape
    return None


def planned_ldm_shape(unet_config: dict) -> LdmShape:
    """The shape of the stand-in LDM this run trains (``ldm_unet``), built on the meta device (no memory).
    It has no condition yet (grid None): ``ldm_unet``'s ``clip_tokens`` x ``clip_dim`` are checked against
    CLIP with the other stages' in :func:`check_shapes`."""
    from .models.ldm import build_ldm

    name = model_arg(unet_config, "ldm_config")
    with torch.device("meta"):
        ldm = build_ldm(name)
    return ldm_shape(ldm, f"ldm_config {name} (trained by this run)")


def check_weights(
    findings: Findings, pipeline: Pipeline, configs: dict[str, dict], data_ok: bool
) -> tuple[ClipGrid | None, LdmShape | None]:
    """Load what the plan names (shipped stand-ins, a CLIP file or tag, an LDM folder); for what the
    run trains itself, the shapes its configs give. Returns CLIP's grid and the LDM's shape (None where
    a problem was found, or where a stage config did not load: that was reported already)."""
    plan = pipeline.plan
    if pipeline.use_shipped:
        from .stand_ins.shipped import load_stand_ins

        root = plan["stand_ins"]
        with findings.check(f"stand-ins {root}"):
            stand_ins = load_stand_ins(root, pipeline.data_dir if data_ok else None)
            findings.verified.append(f"stand-ins {root}: every file matches its sha256")
            return (
                load_clip_grid(findings, stand_ins.clip_model, str(stand_ins.clip_weights)),
                load_ldm_shape(findings, str(stand_ins.ldm)),
            )
        return None, None
    clip = ldm = None
    if plan.get("clip_pretrained"):
        clip = load_clip_grid(findings, plan["clip_model"], str(plan["clip_pretrained"]))
    elif "clip_pretrain" in configs:
        with findings.check("stages.clip_pretrain"):
            clip = clip_grid_of_architecture(model_arg(configs["clip_pretrain"], "architecture"))
            findings.verified.append(f"CLIP {clip.source}: {clip.tokens} x {clip.dim} image tokens")
    if plan.get("pretrained_ldm"):
        ldm = load_ldm_shape(findings, str(plan["pretrained_ldm"]))
    elif "ldm_unet" in configs:
        with findings.check("stages.ldm_unet"):
            ldm = planned_ldm_shape(configs["ldm_unet"])
            findings.verified.append(f"LDM {ldm.source}: {ldm.image_size} px")
    return clip, ldm


# --- shapes between stages --------------------------------------------------------------------------
def image_size(config: dict, manifest: Manifest | None) -> int | None:
    """The side a stage trains at: the model's resize, else the data's, else the dataset's own."""
    size = init_args(config).get("image_size") or init_args(config, "data").get("image_size")
    return size or (manifest.image_size if manifest else None)


def check_shapes(
    findings: Findings,
    configs: dict[tuple[str, str], dict],
    by_stage: dict[str, dict],
    clip: ClipGrid | None,
    ldm: LdmShape | None,
    manifest: Manifest | None,
) -> None:
    """clip_tokens / clip_dim against CLIP, image sizes against the LDM and between model and data."""
    for (stage, _), config in configs.items():
        model, data = init_args(config).get("image_size"), init_args(config, "data").get("image_size")
        if model and data and model != data:
            findings.problems.append(
                f"stages.{stage}: model image_size {model} and data image_size {data} differ (Lightning "
                "refuses hyper-parameters that disagree between model and data): set both alike"
            )
    if clip is not None:
        for stage in ("stage2", "stage1_image", "ldm_unet"):  # the stages that read CLIP's tokens
            if stage not in by_stage:
                continue
            grid = (model_arg(by_stage[stage], "clip_tokens"), model_arg(by_stage[stage], "clip_dim"))
            # unset values follow from the CLIP the pipeline hands the stage; set ones must agree with it
            if any(v is not None and v != c for v, c in zip(grid, (clip.tokens, clip.dim), strict=True)):
                findings.problems.append(
                    f"stages.{stage}: clip_tokens x clip_dim is {grid[0] or clip.tokens} x {grid[1] or clip.dim}, "
                    f"the CLIP {clip.source} gives {clip.tokens} x {clip.dim}: remove "
                    f"stages.{stage}.model.init_args.clip_tokens / clip_dim (they follow from the CLIP)"
                )
        if (
            ldm is not None
            and ldm.grid is not None
            and "stage2" in by_stage
            and ldm.grid != (clip.tokens, clip.dim)
        ):
            findings.problems.append(
                f"LDM {ldm.source} was pretrained on {ldm.grid[0]} x {ldm.grid[1]} CLIP tokens, the CLIP "
                f"{clip.source} gives {clip.tokens} x {clip.dim}: stage 3 refuses a stage-2 encoder aligned "
                "to another CLIP; use the CLIP the LDM was pretrained with"
            )
    if ldm is not None:
        for stage in ("ldm_vq", "ldm_unet", "stage3"):
            size = image_size(by_stage[stage], manifest) if stage in by_stage else None
            if size and size != ldm.image_size:
                findings.problems.append(
                    f"stages.{stage}: images at {size} px, the LDM {ldm.source} works at {ldm.image_size} px "
                    f"(its UNet's latent side x the VQ's downsampling): set stages.{stage} model and data "
                    f"image_size: {ldm.image_size}"
                )


# --- accelerator, devices, precision ----------------------------------------------------------------
def check_devices(findings: Findings, configs: dict[tuple[str, str], dict]) -> None:
    """Build a Trainer with each distinct accelerator / devices / strategy / precision the stages ask
    for: Lightning's own checks, with its own messages, in milliseconds rather than at a stage's start."""
    from lightning.pytorch import Trainer

    from .stages.defaults import default_precision

    wanted: dict[tuple, list[str]] = {}
    for (stage, config_file), config in configs.items():
        trainer = config.get("trainer") or {}
        strategy = trainer.get("strategy", "auto")
        key = (
            trainer.get("accelerator", "auto"),
            trainer.get("devices", "auto"),
            strategy if isinstance(strategy, str) else "auto",  # a class_path strategy is built by the CLI
            trainer.get("num_nodes", 1),
            str(trainer.get("precision") or default_precision()),
        )
        wanted.setdefault(key, []).append(f"{stage} ({config_file})")
    for (accelerator, devices, strategy, nodes, precision), stages in wanted.items():
        what = (
            f"stages {', '.join(stages)}: accelerator {accelerator}, devices {devices}, precision {precision}"
        )
        with findings.check(what), quiet_lightning():
            trainer = Trainer(
                accelerator=accelerator,
                devices=devices,
                strategy=strategy,
                num_nodes=nodes,
                precision=precision,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            chosen = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
            findings.verified.append(f"{what}: available ({chosen}, {trainer.num_devices} device(s))")


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning announces the devices it found and its precision fallbacks: noise in a preflight."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# --- free disk --------------------------------------------------------------------------------------
def fmri_parameters(config: dict, manifest: Manifest) -> int:
    """Parameters of a stage-1 model (its LightningModule built on the meta device: no memory, no time)."""
    from .data.transforms import padded_length
    from .models.sizes import DecoderConfig, EncoderConfig, RegressorConfig

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
    from .pipeline import is_checkpoint_callback

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
    pipeline: Pipeline,
    fits: list[Task],
    configs: dict[tuple[str, str], dict],
    manifest: Manifest,
    ldm: LdmShape | None,
    clip: ClipGrid | None = None,
) -> None:
    """The checkpoints' estimated bytes, and the CLIP feature cache the run builds beside the data (stage 2,
    vis-dec's image phase and the LDM stand-in read it), against the free space of their file systems."""
    need = checkpoint_bytes(findings, fits, configs, manifest, ldm)
    cache = clip_cache_bytes(pipeline, fits, manifest, clip)
    if (
        cache
        and Path(pipeline.data_dir).exists()
        and disk_of(Path(pipeline.data_dir)) != disk_of(pipeline.out)
    ):
        check_free(findings, Path(pipeline.data_dir), cache, "the CLIP feature cache beside the data")
        cache = 0
    check_free(
        findings,
        pipeline.out,
        need + cache,
        "the run's checkpoints" + (" and the CLIP feature cache" if cache else ""),
    )


def disk_of(path: Path) -> int:
    """The device id of the file system ``path`` (or its nearest existing parent) lies on."""
    while not path.exists():
        path = path.parent
    return os.stat(path).st_dev


def clip_cache_bytes(pipeline: Pipeline, fits: list[Task], manifest: Manifest, clip: ClipGrid | None) -> int:
    """float16 CLIP features per image (T x D tokens, image and caption embeddings) for every sample of
    the data (an upper bound: images seen by several subjects are cached once), when a fit reads them and
    this CLIP's cache is not built yet; 0 otherwise."""
    readers = {"stage2", "stage1_image", "ldm_unet"}
    if clip is None or not any(fit.stage in readers for fit in fits) or "://" in pipeline.data_dir:
        return 0
    given = pipeline.given_clip()
    if given is not None:
        from .stages.clip_features import cache_status, clip_cache_id

        with contextlib.suppress(Exception):  # weights that do not load are reported elsewhere
            if cache_status(pipeline.data_dir, clip_cache_id(*given)) == "hit":
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


# --- everything -------------------------------------------------------------------------------------
def preflight(pipeline: Pipeline, methods: list[str], seeds: list[int]) -> Findings:
    """Every check above for ``pipeline``'s plan run with ``methods`` x ``seeds``; nothing is written."""
    findings = Findings()
    manifest = check_dataset(findings, pipeline.data_dir)
    fits = pipeline.fits(methods, seeds)
    configs: dict[tuple[str, str], dict] = {}  # each distinct (stage, config file) once
    for fit in fits:
        if (fit.stage, fit.config_file) not in configs:
            with findings.check(f"stages.{fit.stage} ({fit.config_file})"):
                config = pipeline.stage_config(fit.stage, fit.config_file, fit.stage_dir, 0, {})
                configs[fit.stage, fit.config_file] = config
    by_stage = {stage: config for (stage, _), config in configs.items()}  # one file each but stage1's
    clip, ldm = check_weights(findings, pipeline, by_stage, manifest is not None)
    check_shapes(findings, configs, by_stage, clip, ldm, manifest)
    check_devices(findings, configs)
    if manifest is not None:
        check_ridge_fits(findings, pipeline, methods, manifest)
        check_disk(findings, pipeline, fits, configs, manifest, ldm, clip)
    return findings


def check_ridge_fits(findings: Findings, pipeline: Pipeline, methods: list[str], manifest: Manifest) -> None:
    """The options fitted as ridges from voxels (stage 2's ``linear_path: ridge``, stage 3's ``lowlevel:
    ridge``: a method's own or the plan's) fit on train with their penalty chosen on val: data without both
    splits is refused here, by option and method, not after stage 1 has trained."""
    from .pipeline import METHODS

    stages = pipeline.overrides
    for name in methods:
        method = METHODS[name]
        options = []
        stage2 = {**init_args(stages.get("stage2", {})), **(method.align or {})}
        if method.align is not None and stage2.get("linear_path") == "ridge":
            options.append("linear_path: ridge")
        if {**init_args(stages.get("stage3", {})), **method.stage3}.get("lowlevel") == "ridge":
            options.append("lowlevel: ridge")
        missing = [
            split
            for split in ("train", "val")
            if not manifest.splits.get(split) or not manifest.splits[split].samples
        ]
        if options and missing:
            findings.problems.append(
                f"method {name}: {' and '.join(options)} fit(s) on the train split with the penalty chosen on "
                f"val; {pipeline.data_dir} has no {' or '.join(missing)} split: run the paper's recipe (fcae)"
            )
