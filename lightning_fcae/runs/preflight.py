"""The pipeline's preflight: what a run needs, checked in seconds before hours of training.

``lightning-fcae pipeline --check`` prints one line per problem (exit 2) or a short summary (exit 0), and
every real run makes the same checks before its first stage starts: without them a missing CLIP file
surfaced only when stage 2 started, after stage 1's 100 epochs. It checks a run's description
(:class:`~lightning_fcae.runs.tasks.Run`), never the pipeline that would run it. What is checked (here,
unless a module is named):

* the dataset: its manifest, every shard's size (and sha256 while the shards total at most
  :data:`HASH_BUDGET` bytes, so that the check stays in seconds), the norm stats (sha256, shapes, values);
* the weights the plan names (:mod:`.preflight_weights`): shipped stand-ins against their manifest's
  hashes; the CLIP file or tag loads through open_clip, the LDM folder through diffusers. Weights the plan
  trains itself (the stand-ins, when it names neither real weights nor ``stand_ins``) and earlier stages'
  checkpoints are outputs of the run, not missing inputs;
* shapes that must agree between stages (:mod:`.preflight_weights`): CLIP's token grid ``T x D`` with
  every ``clip_tokens`` / ``clip_dim``, the LDM's image size with stage 3's, a model's ``image_size`` with
  its data's;
* the accelerator, devices and precision every stage asks for exist here (Lightning's own Trainer checks);
* the options fitted as ridges (``linear_path: ridge``, ``lowlevel: ridge``) have a train and a val split;
* free disk for the checkpoints the run keeps and the CLIP feature cache it builds (:mod:`.preflight_disk`,
  rough).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .methods import METHODS
from .plan import PlanError
from .preflight_disk import check_disk
from .preflight_findings import Findings, init_args
from .preflight_weights import check_shapes, check_weights

if TYPE_CHECKING:
    from ..data.schema import Manifest
    from .tasks import Run


# sha256 reads every byte (of the order of a second per GB on one core): beyond this the shards' sizes are checked and
# `lightning-fcae data inspect --verify` is named for their hashes.
HASH_BUDGET = 2**30


class PreflightError(PlanError):
    """A real run refused before its first stage: the preflight's problems, one a line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            f"the preflight found {len(problems)} problem(s), nothing was run:\n"
            + "\n".join(f"  {line}" for line in problems)
        )


def check_dataset(findings: Findings, data_dir: str) -> Manifest | None:
    """Manifest, shard sizes (and sha256 within :data:`HASH_BUDGET`), norm stats; the manifest or None."""
    from ..data.datamodule import is_local, read_manifest
    from ..data.shards import check_shard_file, load_norm_stats

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


def check_devices(findings: Findings, configs: dict[tuple[str, str], dict]) -> None:
    """Build a Trainer with each distinct accelerator / devices / strategy / precision the stages ask
    for: Lightning's own checks, with its own messages, in milliseconds rather than at a stage's start."""
    from lightning.pytorch import Trainer

    from ..stages.defaults import default_precision

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


def preflight(run: Run, methods: list[str], seeds: list[int]) -> Findings:
    """Every check (this module's, :mod:`.preflight_weights`' and :mod:`.preflight_disk`'s) for ``run``'s
    plan with ``methods`` x ``seeds``; nothing is written."""
    findings = Findings()
    manifest = check_dataset(findings, run.data_dir)
    fits = run.fits(methods, seeds)
    configs: dict[tuple[str, str], dict] = {}  # each distinct (stage, config file) once
    for fit in fits:
        if (fit.stage, fit.config_file) not in configs:
            with findings.check(f"stages.{fit.stage} ({fit.config_file})"):
                config = run.stage_config(fit.stage, fit.config_file, fit.stage_dir, 0, {})
                configs[fit.stage, fit.config_file] = config
    by_stage = {stage: config for (stage, _), config in configs.items()}  # one file each but stage1's
    clip, ldm = check_weights(findings, run, by_stage, manifest is not None)
    check_shapes(findings, configs, by_stage, clip, ldm, manifest)
    check_devices(findings, configs)
    if manifest is not None:
        check_ridge_fits(findings, run, methods, manifest)
        check_disk(findings, run, fits, configs, manifest, ldm, clip)
    return findings


def check_ridge_fits(findings: Findings, run: Run, methods: list[str], manifest: Manifest) -> None:
    """The options fitted as ridges from voxels (stage 2's ``linear_path: ridge``, stage 3's ``lowlevel:
    ridge``: a method's own or the plan's) fit on train with their penalty chosen on val: data without both
    splits is refused here, by option and method, not after stage 1 has trained."""
    stages = run.overrides
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
                f"val; {run.data_dir} has no {' or '.join(missing)} split: run the paper's recipe (fcae)"
            )
