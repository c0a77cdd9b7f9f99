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
config (``configs/<stage>.yaml``, laid on the shared ``lightning_fcae/stages/stage_defaults.yaml``)
merged with the plan's overrides and the run's paths, so any row can be re-run by hand with exactly that
command. A stage that finished (``STAGE/done-fit.json``) is skipped when the pipeline is run again, and an
interrupted one resumes from its ``last.ckpt`` (saved every epoch).
If the plan (or a stage config) changed since a stage finished or started, the rerun stops and names the
changed keys instead of mixing old and new results: use a new ``--out``, or delete that stage's folder and
the ones after it. The same holds for the data (``OUT/dataset.json``). docs/reliability.md lists what
survives a kill.

The pipeline is split by what its parts do: :mod:`.tasks` says what a run is made of, :mod:`.stage_runner`
runs one stage, :mod:`.evaluation` scores, and :class:`Pipeline` here chains them; the command line is
:mod:`lightning_fcae.cli.pipeline`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from ..files import atomic
from .evaluation import Evaluation, MethodRun
from .methods import METHODS, chosen_methods
from .plan import PlanError, deep_merge, load_stage_config
from .progress import Progress, clock
from .run_lock import run_lock
from .tasks import Task

DATASET_RECORD = "dataset.json"  # OUT/dataset.json: the data a run folder's results were made from
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"  # what save_pretrained writes after config.json


class Pipeline(Evaluation):
    """Runs a plan (see ``experiments/demo.yaml``) for some methods and seeds into ``out``: every task of
    its :class:`~lightning_fcae.runs.tasks.Run` in order, each fed what the ones before it made."""

    def __call__(self, methods: list[str], seeds: list[int]) -> list[dict]:
        methods, seeds = chosen_methods(methods), list(dict.fromkeys(seeds))  # each runs once
        if not (Path(self.data_dir) / "manifest.json").is_file() and "://" not in self.data_dir:
            raise PlanError(
                f"no dataset at {self.data_dir}: create the synthetic benchmark with `lightning-fcae data "
                f"synth --out {self.data_dir}` or convert NSD with `lightning-fcae data nsd ... --out "
                f"{self.data_dir}` (docs/data.md)"
            )
        if self.use_shipped:  # hashes and dataset checked before anything runs
            from ..stand_ins.shipped import load_stand_ins  # imports torch: only when a plan names them

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
        from ..data.datamodule import read_manifest

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

    def link_stage1(self, task: Task) -> None:
        """``OUT/<method>/seed<k>/stage1``: a relative link to the shared stage-1 run, so that a method's
        folder still reads stage 1 -> 2 -> 3 (and survives the run folder being moved)."""
        link = self.out / task.method / f"seed{task.seed}" / "stage1"
        if link.is_symlink() or link.exists():
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(task.stage_dir, link.parent), target_is_directory=True)

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

    def train_stand_ins(self) -> dict[str, Path]:
        """``lightning-fcae stand-ins train``: fit every stand-in (skipping finished ones) into this run
        folder; returns the folder of each."""
        tasks = self.stand_in_tasks()
        self.progress = Progress(self.weigh(tasks))
        with run_lock(self.out):
            self.run_tasks(tasks)
        return {task.stage: task.stage_dir for task in tasks}
