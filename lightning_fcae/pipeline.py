"""The paper's experiments as one command: every stage in order, each feeding the next, then evaluation.

``lightning-fcae pipeline --plan experiments/demo.yaml --out results/demo`` runs, for each method and
seed, the chain the method needs and writes one folder per stage::

    OUT/shared/clip_pretrain, ldm_vq, ldm_unet   stand-ins for pretrained CLIP / LDM (trained once per
                                                 run, only where the plan names no real weights)
    OUT/<method>/seed<k>/stage1, stage2, stage3  LightningCLI runs (vis-dec: + stage1_image)
    OUT/<method>/seed<k>/recon                   ``lightning-fcae reconstruct`` output
    OUT/<method>/seed<k>/summary.json            what the report tabulates
    OUT/report.html, table2.md, table3.md        :mod:`lightning_fcae.report`
    OUT/dataset.json                             the sha256 of the data's manifest (a rerun on other data
                                                 is refused)

Every stage is a plain ``lightning fit --config STAGE/run.yaml`` subprocess: ``run.yaml`` is the stage's
config (``configs/<stage>.yaml``, laid on the shared ``lightning_fcae/stages/stage_defaults.yaml``) merged with
the plan's overrides and the run's paths, so any row can be re-run by hand with exactly that command. A
stage that finished (``STAGE/done-fit.json``) is skipped when the pipeline is run again, and an
interrupted one resumes from its ``last.ckpt`` (saved every epoch).
If the plan (or a stage config) changed since a stage finished or started, the rerun stops and names the
changed keys instead of mixing old and new results: use a new ``--out``, or delete that stage's folder and
the ones after it. The same holds for the data (``OUT/dataset.json``). docs/reliability.md lists what
survives a kill.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .data.schema import Manifest
from .files import atomic
from .plan import (
    PlanError,
    changed_keys,
    check_plan,
    deep_merge,
    load_stage_config,
    load_yaml,
)
from .progress import Progress, clock, fit_work
from .run_lock import die_with_parent, run_lock
from .stages.defaults import STAGE_DEFAULTS


@dataclass(frozen=True)
class Method:
    """A row of Table 2 and/or 3: which stage-1 pretraining, which stage-2 losses (None: no stage 2)."""

    label: str
    stage1_config: str  # file name under the configs folder
    encoder: str
    align: dict | None  # FCAEAlign init args (use_image / use_text, our options); None skips stage 2
    image_phase: str | None = None  # a second stage-1 run on cached CLIP image tokens (vis-dec)
    tables: tuple[str, ...] = ("table2", "table3")
    stage3: dict = field(default_factory=dict)  # LDMFinetune init args beyond the config (ours: lowlevel)
    init: str = "noise"  # reconstructions start from noise (the paper) or img2img from the low-level image


FULL = {"use_image": True, "use_text": True}
# Ours (beyond the paper; each option chosen on val, docs/method.md): stage 2 starts as the ridge yardstick
# (linear_path: ridge; best.ckpt keeps training only where it beats that start on val), stage 3 keeps the
# yardstick's voxels -> pixels map, and reconstructions start img2img from its image at a strength chosen
# on val.
OURS_ALIGN = {**FULL, "linear_path": "ridge", "linear_lr": 1.0e-5}
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)  # img2img strengths tried on val (1.0: from noise, as the paper)
# Table 3's top-1 is n-way identification of the reconstructions (its F rows have no stage 2, so a score
# on the reconstructions is the one every row has): every method runs stage 3. Table 3's full fCAE row
# is `fcae` and its MAE-F row is `mindvis`: the same chains, run once when both tables share a folder.
METHODS: dict[str, Method] = {
    "fcae": Method("fCAE, the paper's recipe (F+I+T)", "stage1_fcae.yaml", "fCAE", FULL),
    "ours": Method(
        "Ours: fCAE + ridge linear path + img2img (F+I+T)",
        "stage1_fcae.yaml",
        "fCAE",
        OURS_ALIGN,
        stage3={"lowlevel": "ridge"},
        init="lowlevel",
    ),
    "mindvis": Method("MinD-Vis (MAE), F", "stage1_mae.yaml", "MAE", None),
    "visdec": Method(
        "vis-dec (DC-MAE)", "stage1_dcmae.yaml", "DC-MAE", None, "stage1_dcmae_image.yaml", ("table2",)
    ),
    "fcae_F": Method("fCAE, F", "stage1_fcae.yaml", "fCAE", None, tables=("table3",)),
    "fcae_FI": Method(
        "fCAE, F+I", "stage1_fcae.yaml", "fCAE", {"use_image": True, "use_text": False}, tables=("table3",)
    ),
    "fcae_FT": Method(
        "fCAE, F+T", "stage1_fcae.yaml", "fCAE", {"use_image": False, "use_text": True}, tables=("table3",)
    ),
    "mae_FI": Method(
        "MAE, F+I", "stage1_mae.yaml", "MAE", {"use_image": True, "use_text": False}, tables=("table3",)
    ),
}


@dataclass(frozen=True)
class Task:
    """One task of a run (:meth:`Pipeline.tasks`): a ``lightning fit`` or stage 2's ``test`` of a stage from
    its config file, a method's reconstruction, or the ridge yardstick; ``stage_dir`` is where it writes."""

    command: str  # fit | test | reconstruct | ridge: the word the console and the progress name it by
    stage_dir: Path
    stage: str = ""  # fit and test: the stage's name in a plan (its overrides: stages.<stage>)
    config_file: str = ""  # fit and test: the stage config, a file name under the configs folder
    method: str = ""  # a method's tasks: its name (METHODS) ...
    seed: int = 0  # ... and seed; the shared tasks (stand-ins, ridge) run once, with seed 0


@dataclass
class MethodRun:
    """What one method x seed's tasks made so far, in the order they run."""

    last: Path | None = None  # the checkpoint its latest fit wrote: the encoder (then stage 3) the next reads
    extra: dict = field(default_factory=dict)  # the config its latest fit added to its stage config
    identification: dict | None = None  # stage 2's test
    strength: float | None = None  # img2img's strength chosen on val (None: from noise)
    recon: dict | None = None  # the reconstruction's metrics


STAGE_CONFIGS = {
    "clip_pretrain": "clip_pretrain.yaml",
    "ldm_vq": "ldm_pretrain.yaml",
    "ldm_unet": "ldm_pretrain.yaml",
    "stage2": "stage2_align.yaml",
    "stage3": "stage3_ldm.yaml",
    "classifier": "classifier_pretrain.yaml",
}
STAND_IN_STAGES = ("clip_pretrain", "ldm_vq", "ldm_unet", "classifier")  # `lightning-fcae stand-ins train`
DATASET_RECORD = "dataset.json"  # OUT/dataset.json: the data a run folder's results were made from
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"  # what save_pretrained writes after config.json
BEST_CHECKPOINT = "best.ckpt"  # BestCheckpoint's file, beside last.ckpt


def chosen_methods(methods: list[str]) -> list[str]:
    """``methods`` once each, in order; an unknown one is a :class:`PlanError`."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise PlanError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def modalities(method: Method) -> str:
    if method.align is None:
        return "F"
    return "F" + "+I" * method.align["use_image"] + "+T" * method.align["use_text"]


def is_checkpoint_callback(callback: dict) -> bool:
    """A config's ``trainer.callbacks`` entry that writes checkpoints (the stages' StageCheckpoint, or a
    plain ModelCheckpoint a user config names)."""
    return callback["class_path"].endswith(("ModelCheckpoint", "StageCheckpoint", "BestCheckpoint"))


def run_paths(config: dict, stage_dir: Path, run_name: str) -> dict:
    """Point a stage config's outputs into ``stage_dir``: root dir, checkpoints, its logger (the shared
    W&B logger of ``stage_defaults.yaml`` unless the config names a single other one), plus a CSV log
    (``stage_dir/csv/fit/metrics.csv``) the report plots from."""
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = str(stage_dir)
    for callback in trainer.get("callbacks") or []:
        if is_checkpoint_callback(callback):
            callback.setdefault("init_args", {})["dirpath"] = str(stage_dir / "checkpoints")
    logger = trainer.get("logger")
    if not (isinstance(logger, dict) and "class_path" in logger):
        logger = load_yaml(STAGE_DEFAULTS)["trainer"]["logger"]
    logger = deep_merge(logger, {"init_args": {"name": run_name, "save_dir": str(stage_dir)}})
    trainer["logger"] = [logger, csv_logger(stage_dir, "fit")]
    return config


def csv_logger(stage_dir: Path, version: str) -> dict:
    return {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(stage_dir), "name": "csv", "version": version},
    }


def keep_csv_history(log_dir: Path, resume_step: int | None = None) -> None:
    """Move a killed run's ``metrics.csv`` aside as ``metrics.part<k>.csv`` before it resumes: Lightning's
    CSVLogger deletes the file it finds, and with it every epoch logged before the kill. Rows from
    ``resume_step`` on (the steps after the checkpoint it resumes from, which the resumed run logs again)
    are left out, so the history holds one row per step. The report's curves read the parts in order
    (``report/curves.py``)."""
    metrics = log_dir / "metrics.csv"
    if not metrics.is_file():
        return
    k = 1 + sum(1 for _ in log_dir.glob("metrics.part*.csv"))
    part = log_dir / f"metrics.part{k}.csv"
    with metrics.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header, rows = reader.fieldnames or [], list(reader)
    if resume_step is not None:
        rows = [row for row in rows if not row.get("step") or int(row["step"]) < resume_step]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(part, text.getvalue())
    metrics.unlink()


def checkpoint_step(path: Path) -> int | None:
    """The ``global_step`` a Lightning checkpoint was saved at (None if it does not say)."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # an unreadable checkpoint is named where it is resumed from, not here
        return None


def resume_point(checkpoints: Path) -> Path | None:
    """Where an interrupted fit resumes: ``last.ckpt``; or, when the kill fell between Lightning deleting
    the epoch file ``last.ckpt`` linked to and linking it to the new one (``save_last: link``), the newest
    epoch checkpoint; None when no epoch was saved."""
    last = checkpoints / "last.ckpt"
    if last.is_file():
        return last
    steps = {
        p: int(m[1]) for p in checkpoints.glob("epoch=*.ckpt") if (m := re.search(r"step=(\d+)", p.name))
    }
    return max(steps, key=steps.get) if steps else None


def last_csv_values(path: Path) -> dict[str, float]:
    """The last logged value of every column of a CSVLogger ``metrics.csv`` (rows are sparse)."""
    values = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            values.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return values


class Pipeline:
    """Runs a plan (see ``experiments/demo.yaml``) for some methods and seeds into ``out``."""

    def __init__(
        self, plan: dict, out: Path, configs: Path, dry_run: bool = False, train_stand_ins: bool = False
    ):
        self.plan, self.out, self.configs, self.dry_run = plan, out, configs, dry_run
        check_plan(plan, known_stages=["stage1", "stage1_image", *STAGE_CONFIGS])
        self.data_dir = str(plan["data_dir"])
        self.use_shipped = bool(plan.get("stand_ins")) and not train_stand_ins
        self.stand_ins = None  # the shipped stand-ins once verified in __call__; None: trained here
        self.overrides = plan.get("stages") or {}
        self.progress = Progress({})  # the planned work, once the methods and seeds are known
        self.running: str | None = None  # the stage under way: what an interruption leaves half done

    # --- one stage --------------------------------------------------------------------------------
    def stage_config(self, stage: str, config_file: str, stage_dir: Path, seed: int, extra: dict) -> dict:
        config = load_stage_config(self.configs / config_file)
        config = deep_merge(config, self.overrides.get(stage, {}))
        config = deep_merge(
            config, {"seed_everything": seed, "data": {"init_args": {"data_dir": self.data_dir}}}
        )
        config = deep_merge(config, extra)
        return run_paths(config, stage_dir, f"{self.out.name}-{stage_dir.parent.name}-{stage_dir.name}")

    def stage_name(self, stage_dir: Path) -> str:
        """A stage's folder as the console names it: relative to the run folder (its own name outside it)."""
        return str(stage_dir.relative_to(self.out)) if stage_dir.is_relative_to(self.out) else stage_dir.name

    def fit(
        self,
        stage: str,
        config_file: str,
        stage_dir: Path,
        seed: int,
        extra: dict,
        exports: tuple[Path, ...] = (),
    ) -> Path:
        """``lightning fit`` one stage (skipped when done, resumed from its last checkpoint when it was
        interrupted); returns the checkpoint it hands on: its best on val where it keeps one
        (``BestCheckpoint``: stage 2), else its last. ``exports``: files the stage writes besides its
        checkpoint; the stage is done only once they exist."""
        last = stage_dir / "checkpoints" / "last.ckpt"
        config = self.stage_config(stage, config_file, stage_dir, seed, extra)
        args = ["fit", "--config", str(stage_dir / "run.yaml")]
        resume = resume_point(last.parent)
        if resume is not None:  # an interrupted fit left it; a finished one is skipped in run()
            if not zipfile.is_zipfile(resume):  # torch's format is a zip: a cut-off file has no directory
                name = self.stage_name(stage_dir)
                raise PlanError(
                    f"{resume}, where {name} would resume, is damaged (cut off by a crash while it "
                    f"was written?); delete {last.parent} to rerun {name} from its start"
                )
            args += ["--ckpt_path", str(resume)]
            if not self.dry_run:
                keep_csv_history(stage_dir / "csv" / "fit", checkpoint_step(resume))
        self.run(stage_dir, config, args, exports=exports)
        if not self.dry_run and not last.exists():  # the next stage reads it: say so here, not there
            raise PlanError(
                f"{self.stage_name(stage_dir)} finished without writing {last}: its config's checkpoint callback must "
                "keep a last checkpoint (StageCheckpoint does); fix the config and delete "
                f"{stage_dir} to rerun it"
            )
        best = last.parent / BEST_CHECKPOINT  # a stage that keeps its best on val hands that on
        return best if best.is_file() else last

    def run(
        self,
        stage_dir: Path,
        config: dict,
        args: list[str],
        config_name: str = "run.yaml",
        exports: tuple[Path, ...] = (),
        task: str | None = None,
    ) -> None:
        """Run one command in ``stage_dir`` unless it finished before with this very config and left its
        ``exports``. A stage that finished (or started, for a resumable fit) with another config is a
        :class:`PlanError`: skipping it would report stale results, re-running it would leave later
        stages stale. A finished stage whose export is missing runs again: resumed at its end, the fit
        only exports. ``task``: the progress task this command is a part of (its caller marks it done)."""
        done = stage_dir / f"done-{args[0]}.json"
        part_of = task
        task = task or self.task_key(stage_dir, args[0])
        label = f"{self.progress.line(task)} {stage_dir.relative_to(self.out)}"
        saved = stage_dir / config_name
        config = yaml.safe_load(yaml.safe_dump(config, sort_keys=False))  # as it reads back from disk
        started = done.is_file() or (args[0] == "fit" and "--ckpt_path" in args)
        if started and saved.is_file():
            changed = changed_keys(yaml.safe_load(saved.read_text()), config)
            if changed:
                raise PlanError(
                    f"{stage_dir} {'finished' if done.is_file() else 'started'} with another config "
                    f"({', '.join(changed)} differ from {saved.name}); use a new --out, or delete "
                    f"{stage_dir} and the stages that follow it to re-run them"
                )
        missing = [path for path in exports if not path.exists()]
        if done.is_file() and not missing:
            print(f"{label}: done already, skipped", flush=True)
            if part_of is None:
                self.progress.finish(task, None)
            return
        stage_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(yaml.safe_dump(config, sort_keys=False))
        command = [sys.executable, "-m", "lightning_fcae", *args]
        print(f"{label}: python -m {' '.join(command[2:])}", flush=True)  # runnable as printed
        if self.dry_run:
            return
        start = time.monotonic()
        self.running = str(stage_dir.relative_to(self.out))
        result = subprocess.run(command, preexec_fn=die_with_parent)  # noqa: PLW1509 (no threads here)
        self.running = None
        if result.returncode != 0:
            raise RuntimeError(f"{stage_dir}: `{' '.join(command)}` failed (exit {result.returncode})")
        missing = [str(path) for path in exports if not path.exists()]
        if missing:
            raise RuntimeError(
                f"{stage_dir}: `{' '.join(command)}` finished without writing {', '.join(missing)}"
            )
        seconds = time.monotonic() - start
        atomic.write_text(done, json.dumps({"seconds": round(seconds, 1), "command": command}))
        if part_of is None:
            self.progress.finish(task, seconds)
        else:
            self.progress.ran_seconds += seconds  # the rate counts it; its task's work when that ends

    # --- the chain ---------------------------------------------------------------------------------
    def tasks(self, methods: list[str], seeds: list[int]) -> list[Task]:
        """Every task of a run of ``methods`` x ``seeds``, in the order it runs: the one description of the
        chain. :meth:`run_tasks` runs them (feeding each what the ones before it made); :meth:`fits` (what
        the preflight checks) and :meth:`planned_work` (the progress) read them. The CLIP and LDM
        stand-ins train first, unless the plan names real weights or the shipped stand-ins; the ridge
        yardstick once CLIP is there; then per seed and method: stage 1 (vis-dec: and its image phase),
        stage 2 and its test where the method aligns, stage 3, the reconstruction."""
        tasks = []
        if not self.use_shipped and not self.plan.get("clip_pretrained"):
            tasks.append(self.shared_task("clip_pretrain"))
        tasks.append(Task("ridge", self.out / "ridge" / "seed0"))
        if not self.use_shipped and not self.plan.get("pretrained_ldm"):
            tasks += [self.shared_task("ldm_vq"), self.shared_task("ldm_unet")]
        for seed in dict.fromkeys(seeds):
            for name in chosen_methods(methods):
                method, root = METHODS[name], self.out / name / f"seed{seed}"
                # stage 1 depends on its config and seed only: methods that share them share one run
                tasks.append(
                    Task("fit", self.stage1_dir(method, seed), "stage1", method.stage1_config, name, seed)
                )
                stages = []
                if method.image_phase is not None:
                    stages.append(("stage1_image", method.image_phase))
                if method.align is not None:
                    stages.append(("stage2", STAGE_CONFIGS["stage2"]))
                stages.append(("stage3", STAGE_CONFIGS["stage3"]))
                for stage, config_file in stages:
                    commands = ("fit", "test") if stage == "stage2" else ("fit",)
                    tasks += [Task(c, root / stage, stage, config_file, name, seed) for c in commands]
                if method.init == "lowlevel":  # img2img: its strength is chosen on val first
                    tasks.append(Task("strength", root / "strength", method=name, seed=seed))
                tasks.append(Task("reconstruct", root / "recon", method=name, seed=seed))
        return tasks

    def link_stage1(self, task: Task) -> None:
        """``OUT/<method>/seed<k>/stage1``: a relative link to the shared stage-1 run, so that a method's
        folder still reads stage 1 -> 2 -> 3 (and survives the run folder being moved)."""
        link = self.out / task.method / f"seed{task.seed}" / "stage1"
        if link.is_symlink() or link.exists():
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(task.stage_dir, link.parent), target_is_directory=True)

    def stage1_dir(self, method: Method, seed: int) -> Path:
        """``OUT/stage1/<config>/seed<k>``: one stage-1 run per config and seed, whichever methods read it
        (``fcae``, ``ours`` and Table 3's fCAE rows share one, ``mindvis`` and ``mae_FI`` another); each
        method's folder links to it as ``stage1``."""
        return self.out / "stage1" / Path(method.stage1_config).stem / f"seed{seed}"

    def shared_task(self, stage: str) -> Task:
        """The fit of a stand-in (or of the checks' judge): once per run folder, into ``OUT/shared``."""
        return Task("fit", self.out / "shared" / stage, stage, STAGE_CONFIGS[stage])

    def stand_in_tasks(self) -> list[Task]:
        """The tasks of ``lightning-fcae stand-ins train``: every stand-in and the checks' judge."""
        return [self.shared_task(stage) for stage in STAND_IN_STAGES]

    def task_key(self, stage_dir: Path, command: str) -> str:
        """A task's name in the progress and the console: its folder in the run, and its command."""
        return f"{stage_dir.relative_to(self.out)}:{command}"

    def run_tasks(self, tasks: list[Task]) -> list[dict]:
        """Run ``tasks`` (:meth:`tasks` or :meth:`stand_in_tasks`) in order, each fed what the tasks before
        it made: CLIP and the LDM (the plan's, the shipped stand-ins, or those these tasks train), and a
        method's latest checkpoint. Returns each method x seed's summary."""
        clip, ldm = self.given_clip(), self.given_ldm()  # None: a task below trains it
        runs: dict[tuple[str, int], MethodRun] = {}
        summaries = []
        for task in tasks:
            if task.method:
                run = runs.setdefault((task.method, task.seed), MethodRun())
                if self.method_task(task, run, clip, ldm):
                    summaries.append(self.summary(task, run))
            elif task.command == "ridge":
                self.ridge(task, clip)
            elif task.stage == "clip_pretrain":
                clip = self.clip_stand_in(task)
            elif task.stage in ("ldm_vq", "ldm_unet"):
                ldm = self.ldm_stand_in(task, clip)
            elif task.stage == "classifier":
                self.classifier(task)
            else:
                raise ValueError(f"no runner for {task}")
        return summaries

    # --- shared stand-ins -------------------------------------------------------------------------
    def given_clip(self) -> tuple[str, str] | None:
        """(open_clip model, weights) of the plan's real CLIP or of the shipped stand-ins; None when the
        run trains the stand-in."""
        if self.plan.get("clip_pretrained"):
            return self.plan["clip_model"], self.plan["clip_pretrained"]
        if self.stand_ins is not None:
            return self.stand_ins.clip_model, str(self.stand_ins.clip_weights)
        return None

    def given_ldm(self) -> str | None:
        """The plan's pretrained LDM directory, or the shipped stand-in's; None when the run trains it."""
        if self.plan.get("pretrained_ldm"):
            return self.plan["pretrained_ldm"]
        return None if self.stand_ins is None else str(self.stand_ins.ldm)

    def clip_stand_in(self, task: Task) -> tuple[str, str]:
        """Train the CLIP stand-in on the data (``OUT/shared/clip.pt``); its (open_clip model, weights)."""
        weights = self.out / "shared" / "clip.pt"
        config = load_stage_config(self.configs / task.config_file)
        model = deep_merge(config, self.overrides.get(task.stage, {}))["model"]["init_args"]["architecture"]
        extra = {"model": {"init_args": {"export_path": str(weights)}}}
        self.fit(task.stage, task.config_file, task.stage_dir, 0, extra, (weights,))
        return model, str(weights)

    def ldm_stand_in(self, task: Task, clip: tuple[str, str]) -> str:
        """Train one part of the LDM stand-in on the data into ``OUT/shared/ldm``: the VQ (``ldm_vq``), then
        a UNet conditioned on the ``clip`` stand-in's features (``ldm_unet``); returns the folder."""
        export = self.out / "shared" / "ldm"
        part = task.stage.removeprefix("ldm_")
        args = {"part": part, "export_dir": str(export)}
        if part == "unet":
            args |= {"clip_model": clip[0], "clip_pretrained": clip[1]}
        extra = {"model": {"init_args": args}}
        written = ("vqvae",) if part == "vq" else ("unet", "condition")  # condition/ is written last
        exports = tuple(export / name / DIFFUSERS_WEIGHTS for name in written)
        self.fit(task.stage, task.config_file, task.stage_dir, 0, extra, exports)
        return str(export)

    def classifier(self, task: Task | None = None) -> Path:
        """The judge of the stand-in checks, trained on the data (``make stand-ins`` only)."""
        task = task or self.shared_task("classifier")
        export = self.out / "shared" / "classifier_export"
        extra = {"model": {"init_args": {"export_dir": str(export)}}}
        self.fit(task.stage, task.config_file, task.stage_dir, 0, extra, (export / DIFFUSERS_WEIGHTS,))
        return export

    # --- the ridge yardstick ---------------------------------------------------------------------
    def ridge(self, task: Task, clip: tuple[str, str]) -> None:
        """``OUT/ridge/seed0/summary.json``: per-subject ridge decoders from voxels, scored like the
        methods (:mod:`lightning_fcae.yardstick`); recomputed only when its settings change."""
        root, key = task.stage_dir, self.task_key(task.stage_dir, task.command)
        stage3 = deep_merge(
            load_stage_config(self.configs / STAGE_CONFIGS["stage3"]), self.overrides.get("stage3", {})
        )
        size = stage3["model"]["init_args"].get("image_size")
        n_way = int((self.plan.get("reconstruct") or {}).get("n_way", 50))
        stage2 = deep_merge(
            load_stage_config(self.configs / STAGE_CONFIGS["stage2"]), self.overrides.get("stage2", {})
        )
        # the ranks of the maps stage 2's linear path and stage 3's low-level decoder fit, so that their
        # step 0 is this row
        ranks = {
            "rank": stage2["model"]["init_args"].get("linear_rank", 128),
            "pixel_rank": stage3["model"]["init_args"].get("lowlevel_rank", 256),
        }
        settings = {
            "data_dir": self.data_dir,
            "clip": list(clip),
            "image_size": size,
            "n_way": n_way,
            **ranks,
        }
        label = f"{self.progress.line(key)} {root.relative_to(self.out)}"
        path = root / "summary.json"
        if path.is_file() and json.loads(path.read_text()).get("settings") == settings:
            print(f"{label}: done already, skipped", flush=True)
            self.progress.finish(key, None)
            return
        print(f"{label}: ridge yardstick (voxels -> CLIP tokens, voxels -> pixels)", flush=True)
        if self.dry_run:
            return
        start = time.monotonic()
        from torchvision.utils import save_image

        from .data.datamodule import read_manifest
        from .models.clip import load_clip
        from .yardstick import ridge_yardstick

        self.running = str(root.relative_to(self.out))
        size = size or read_manifest(self.data_dir).image_size
        result = ridge_yardstick(self.data_dir, load_clip(*clip), size, n_way, **ranks)
        (root / "recon").mkdir(parents=True, exist_ok=True)
        save_image(result["grid"], root / "recon" / "grid.png")
        summary = {
            "run": self.out.name,
            "method": "ridge",
            "label": "Ridge yardstick (voxels → pixels; → CLIP tokens)",
            "seed": 0,
            "encoder": "none (ridge)",
            "modalities": "–",
            "tables": ["table2", "table3"],
            "data_dir": self.data_dir,
            "params": None,
            "identification": result["identification"],
            "identification_per_subject": result["identification_per_subject"],
            "recon": result["recon"],
            "settings": settings,
        }
        atomic.write_text(path, json.dumps(summary, indent=2))
        self.running = None
        self.progress.finish(key, time.monotonic() - start)

    # --- one method x seed ------------------------------------------------------------------------
    def method_task(self, task: Task, run: MethodRun, clip: tuple[str, str], ldm: str) -> bool:
        """Run one of a method's tasks on what its earlier ones made (``run``, updated); True after its
        last, the reconstruction."""
        if task.command == "fit":
            run.extra = self.stage_inputs(task, run.last, clip, ldm)
            run.last = self.fit(task.stage, task.config_file, task.stage_dir, task.seed, run.extra)
            if task.stage == "stage1":
                self.link_stage1(task)
        elif task.command == "test":  # stage 2's, of the checkpoint its fit just wrote
            run.identification = self.test_identification(task.stage_dir, task.seed, run.extra, run.last)
        elif task.command == "strength":  # img2img's strength, chosen on val
            run.strength = self.choose_strength(run.last, task.stage_dir, task.seed, clip)
        elif task.command == "reconstruct":  # from the stage-3 checkpoint
            run.recon = self.reconstruct(run.last, task.stage_dir, task.seed, clip, run.strength)
            return True
        else:
            raise ValueError(f"no runner for {task}")
        return False

    def stage_inputs(self, task: Task, encoder: Path | None, clip: tuple[str, str], ldm: str) -> dict:
        """What a method's stage takes from the tasks before it, on top of its config: the checkpoint of
        the method's previous fit (``encoder``), CLIP's weights for the feature cache, the LDM."""
        method = METHODS[task.method]
        clip_args = {"clip_model": clip[0], "clip_pretrained": clip[1]}  # the stage builds its feature cache
        if task.stage == "stage1":
            return {}
        if task.stage == "stage1_image":
            return {"model": {"init_args": {"init_ckpt": str(encoder), **clip_args}}}
        if task.stage == "stage2":
            return {"model": {"init_args": {"encoder_ckpt": str(encoder), **method.align, **clip_args}}}
        if task.stage == "stage3":
            args = {"pretrained_ldm": ldm, "encoder_ckpt": str(encoder), **method.stage3}
            return {"model": {"init_args": args}}
        raise ValueError(f"no inputs known for {task}")

    def summary(self, task: Task, run: MethodRun) -> dict:
        """``OUT/<method>/seed<k>/summary.json`` (what the report tabulates), once its last task ran."""
        name, method, root = task.method, METHODS[task.method], task.stage_dir.parent
        seconds = {}
        for stage_dir in sorted(root.glob("*/done-*.json")):
            seconds[f"{stage_dir.parent.name}/{stage_dir.stem[5:]}"] = json.loads(stage_dir.read_text())[
                "seconds"
            ]
        summary = {
            "run": self.out.name,
            "method": name,
            "label": method.label,
            "seed": task.seed,
            "encoder": method.encoder,
            "modalities": modalities(method),
            "tables": list(method.tables),
            "data_dir": self.data_dir,
            "params": None if self.dry_run else parameter_counts(root),
            "identification": run.identification,
            "recon": run.recon,
            "init": method.init,
            "strength": run.strength,  # img2img's, chosen on val (None: from noise)
            "stage1": str(self.stage1_dir(method, task.seed).relative_to(self.out)),  # shared by methods
            "seconds": seconds,
        }
        if not self.dry_run:
            atomic.write_text(root / "summary.json", json.dumps(summary, indent=2))
        return summary

    def test_identification(self, stage_dir: Path, seed: int, extra: dict, checkpoint: Path) -> dict | None:
        """``lightning test`` of the stage-2 checkpoint: n-way top-1 of the fMRI embedding among CLIP's."""
        config = self.stage_config("stage2", STAGE_CONFIGS["stage2"], stage_dir, seed, extra)
        config["trainer"]["logger"] = [csv_logger(stage_dir, "test")]
        args = ["test", "--config", str(stage_dir / "test.yaml"), "--ckpt_path", str(checkpoint)]
        self.run(stage_dir, config, args, config_name="test.yaml")
        metrics = stage_dir / "csv" / "test" / "metrics.csv"
        if self.dry_run or not metrics.is_file():
            return None
        values = last_csv_values(metrics)
        return {k.removeprefix("test/"): v for k, v in values.items() if k.startswith("test/top1_")}

    def reconstruct(
        self,
        checkpoint: Path,
        out: Path,
        seed: int,
        clip: tuple[str, str],
        strength: float | None = None,
        split: str = "test",
        task: str | None = None,
    ) -> dict | None:
        """``lightning-fcae reconstruct`` of ``split`` into ``out`` (img2img from the low-level image at
        ``strength``; None: from noise); its metrics."""
        options = self.plan.get("reconstruct") or {}
        args = ["reconstruct", "--ckpt", str(checkpoint), "--data", self.data_dir, "--out", str(out)]
        args += ["--seed", str(seed), "--clip-model", clip[0], "--clip-pretrained", clip[1], "--split", split]
        if strength is not None:
            args += ["--init", "lowlevel", "--strength", str(strength)]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            args += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
        self.run(out, {"reconstruct": args}, args, config_name="command.yaml", task=task)
        metrics = out / "metrics.json"
        return json.loads(metrics.read_text()) if metrics.is_file() else None

    def choose_strength(self, checkpoint: Path, out: Path, seed: int, clip: tuple[str, str]) -> float | None:
        """img2img's strength, chosen on val (never on test): the val split reconstructed at each of
        :data:`STRENGTHS` into ``out/<strength>``, scored by :func:`strength_score`; the choice and every
        score in ``out/choice.json``."""
        key = self.task_key(out, "strength")
        path = out / "choice.json"
        scores = {}
        for strength in STRENGTHS:
            metrics = self.reconstruct(checkpoint, out / f"{strength:g}", seed, clip, strength, "val", key)
            if metrics is not None:
                scores[strength] = strength_score(metrics)
        if self.dry_run or not scores:
            return STRENGTHS[len(STRENGTHS) // 2]
        self.progress.finish(key, None)
        self.progress.ran_work += self.progress.weights.get(key, 0.0)
        best = max(scores, key=lambda s: (scores[s], s))  # ties: the higher strength (more of the LDM)
        atomic.write_text(
            path,
            json.dumps({"strength": best, "val_scores": scores, "criterion": STRENGTH_CRITERION}, indent=2),
        )
        print(
            f"{out.relative_to(self.out)}: img2img strength {best:g} chosen on val ({STRENGTH_CRITERION})",
            flush=True,
        )
        return best

    # --- everything -------------------------------------------------------------------------------
    def __call__(self, methods: list[str], seeds: list[int]) -> list[dict]:
        methods, seeds = chosen_methods(methods), list(dict.fromkeys(seeds))  # each runs once
        if not (Path(self.data_dir) / "manifest.json").is_file() and "://" not in self.data_dir:
            raise PlanError(
                f"no dataset at {self.data_dir}: create the synthetic benchmark with `lightning-fcae data "
                f"synth --out {self.data_dir}` or convert NSD with `lightning-fcae data nsd ... --out "
                f"{self.data_dir}` (docs/data.md)"
            )
        if self.use_shipped:  # hashes and dataset checked before anything runs
            from .stand_ins.shipped import load_stand_ins  # imports torch: only when a plan names them

            self.stand_ins = load_stand_ins(self.plan["stand_ins"], self.data_dir)
        if not self.dry_run:  # weights, shapes, devices, disk: in seconds, not after hours of stage 1
            from .preflight import PreflightError, preflight

            findings = preflight(self, methods, seeds)
            if findings.problems:
                raise PreflightError(findings.problems)
        tasks = self.tasks(methods, seeds)
        self.progress = Progress(self.weigh(tasks))
        with run_lock(self.out):
            self.check_dataset()
            summaries = self.run_tasks(tasks)
        done = (
            "dry run: configs written, nothing run or checked (--check)"
            if self.dry_run
            else "all stages done"
        )
        print(f"[pipeline {clock(time.monotonic() - self.progress.started)}] {done}", flush=True)
        return summaries

    def check_dataset(self) -> None:
        """One dataset per run folder: ``OUT/dataset.json`` records the sha256 of the data's manifest (which
        holds every shard's and the norm stats' sha256) on the first run. A rerun on other data at the same
        path (regenerated, another seed, a new NSD conversion) is refused: it would skip the finished
        stages and report their results as the new data's."""
        from .data.datamodule import read_manifest

        digest = hashlib.sha256(read_manifest(self.data_dir).to_json().encode()).hexdigest()
        path = self.out / DATASET_RECORD
        if path.is_file():
            recorded = json.loads(path.read_text())
            if recorded.get("manifest_sha256") != digest:
                raise PlanError(
                    f"{self.out} holds results made from another dataset (manifest sha256 "
                    f"{str(recorded.get('manifest_sha256'))[:12]}, recorded in {path}; the data at {self.data_dir} "
                    f"has {digest[:12]}): use a new --out, or point --data at the dataset it was made from"
                )
        atomic.write_text(path, json.dumps({"data_dir": self.data_dir, "manifest_sha256": digest}, indent=2))

    def fits(self, methods: list[str], seeds: list[int]) -> list[Task]:
        """Every ``lightning fit`` the run makes, in order (the stand-ins it trains first): what the
        preflight checks; the fit tasks of :meth:`tasks`."""
        return [task for task in self.tasks(methods, seeds) if task.command == "fit"]

    def planned_work(self, methods: list[str], seeds: list[int]) -> dict[str, float]:
        """Every task this run will go through (:meth:`tasks`), in order, weighed by the samples each
        processes (:mod:`lightning_fcae.progress`)."""
        return self.weigh(self.tasks(methods, seeds))

    def weigh(self, tasks: list[Task]) -> dict[str, float]:
        """``{task: the samples it processes}`` in the tasks' order; all alike for data that is not on
        this machine (a URL)."""
        if "://" in self.data_dir:
            return {self.task_key(task.stage_dir, task.command): 1.0 for task in tasks}
        samples = {name: split.samples for name, split in Manifest.load(self.data_dir).splits.items()}
        return {self.task_key(task.stage_dir, task.command): self.task_work(task, samples) for task in tasks}

    def task_work(self, task: Task, samples: dict[str, int]) -> float:
        """The samples one task processes (see :meth:`planned_work`): the ridge one pass over the data, a
        stage-2 test the test split, a reconstruction the test split times its sampling steps (img2img's
        choice of strength: the val split times the steps of every strength tried), a fit what its stage
        config's budget trains on."""
        test = samples.get("test", 0)
        if task.command == "ridge":
            return float(sum(samples.values()))
        if task.command == "test":
            return float(test)
        steps = int((self.plan.get("reconstruct") or {}).get("steps", 50))
        if task.command == "reconstruct":  # img2img runs part of the steps: counted whole, as planned
            return float(test * steps)
        if task.command == "strength":  # the val split at each strength, each running that part
            return float(samples.get("val", 0) * steps * sum(STRENGTHS))
        config = deep_merge(
            load_stage_config(self.configs / task.config_file), self.overrides.get(task.stage, {})
        )
        batch = (config.get("data") or {}).get("init_args", {}).get("batch_size", 32)
        return fit_work(config.get("trainer") or {}, batch, samples.get("train", 0))


def parameter_counts(root: Path) -> dict[str, int]:
    """fMRI side (stage-1 encoder + regressor: the paper's Table 3 count) and, with stage 3, the whole
    reconstruction model (fMRI encoder + token map, condition encoder, UNet, VQ: its Table 2 count),
    rebuilt from the checkpoints' model records (a stage-3 checkpoint leaves the frozen LDM to its folder)."""
    from .inference.reconstruction_pipeline import FMRIReconstructionPipeline
    from .models.factory import load_model

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    stage1 = load_model(root / "stage1/checkpoints/last.ckpt", "model")
    counts = {
        "fmri": count(stage1.encoder) + (count(stage1.regressor) if hasattr(stage1, "regressor") else 0)
    }
    stage3 = root / "stage3/checkpoints/last.ckpt"
    if stage3.is_file():
        pipe = FMRIReconstructionPipeline.from_checkpoint(stage3)
        counts["total"] = sum(
            count(part) for part in (pipe.fmri_encoder, pipe.condition, pipe.unet, pipe.vqvae)
        )
    return counts


STRENGTH_CRITERION = "CLIP 2-way + PixCorr + SSIM on val, mean over subjects; PixCorr + SSIM without CLIP"


def strength_score(metrics: dict) -> float:
    """How good a val reconstruction is, for choosing img2img's strength: semantic (the CLIP stand-in's
    2-way identification) and low-level (PixCorr, SSIM) fidelity in one sum, each of them 1 at best."""
    raw = metrics["raw"]["mean"]
    return float(raw.get("clip_2way", 0.0) + raw["pixcorr"] + raw["ssim"])


def seed_value(text: str) -> int:
    """A ``--seeds`` entry: numpy and Lightning take seeds in [0, 2**32)."""
    seed = int(text)
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"seeds must be in [0, 2**32), got {seed}")
    return seed


def interrupted(pipeline: Pipeline | None, argv: list[str]) -> str:
    """The one line a Ctrl-C prints: what was saved and the command that resumes."""
    command = shlex.join(["lightning-fcae", "pipeline", *argv])
    if pipeline is None or pipeline.running is None:
        return f"interrupted: finished stages are kept; rerun `{command}` to go on"
    return (
        f"interrupted during {pipeline.running}: the stages before it are kept, it resumes from what it "
        f"last saved (a fit: its last epoch's checkpoint); rerun `{command}` to go on"
    )


def check(pipeline: Pipeline, methods: list[str], seeds: list[int]) -> int:
    """``pipeline --check``: the preflight's problems, one a line (exit 2), or what it verified (exit 0)."""
    from .preflight import preflight

    started = time.monotonic()
    findings = preflight(pipeline, methods, seeds)
    if findings.problems:
        print("\n".join(f"problem: {line}" for line in findings.problems), file=sys.stderr)
        print(f"preflight: {len(findings.problems)} problem(s)", file=sys.stderr)
        return 2
    print("\n".join(f"ok: {line}" for line in findings.verified))
    print(f"preflight OK ({time.monotonic() - started:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``lightning-fcae pipeline --plan PLAN --out DIR [--methods ...] [--seeds ...]``."""
    parser = argparse.ArgumentParser(prog="lightning-fcae pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, required=True, help="experiments/demo.yaml or paper.yaml")
    parser.add_argument("--out", type=Path, required=True, help="run folder (a rerun resumes)")
    parser.add_argument("--methods", nargs="+", default=["fcae"], help=f"of {', '.join(METHODS)}")
    parser.add_argument("--seeds", nargs="+", type=seed_value, default=[0])
    parser.add_argument("--data", default=None, help="dataset directory (default: the plan's data_dir)")
    parser.add_argument("--configs", type=Path, default=Path("configs"), help="the stage configs' folder")
    parser.add_argument("--dry-run", action="store_true", help="write the configs, print the commands")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only the preflight (every real run makes it first): data, weights, shapes, devices, disk; "
        "one line per problem, exit 2 if any",
    )
    parser.add_argument(
        "--train-stand-ins",
        action="store_true",
        help="train the CLIP and LDM stand-ins into OUT/shared instead of using the plan's shipped stand_ins",
    )
    parser.add_argument("--no-report", dest="report", action="store_false")
    args = parser.parse_args(argv)
    pipeline = None
    try:
        plan = load_yaml(args.plan)
        if args.data:
            plan["data_dir"] = args.data
        if "data_dir" not in plan:
            raise PlanError(f"{args.plan}: no data_dir (or pass --data)")
        pipeline = Pipeline(plan, args.out, args.configs, args.dry_run, args.train_stand_ins)
        if args.check:
            return check(pipeline, args.methods, args.seeds)
        pipeline(args.methods, args.seeds)
    except (PlanError, RuntimeError, FileNotFoundError) as exc:  # StandInError is a FileNotFoundError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what is kept and how to go on, not a traceback
        print(interrupted(pipeline, sys.argv[1:] if argv is None else argv), file=sys.stderr)
        return 130
    if args.report and not args.dry_run:
        from .report import write_report

        print(f"wrote {write_report(args.out)}")
    return 0
