"""What a run is made of, before anything runs: its tasks in order and the config each stage is run with.

The pipeline runs these tasks (:mod:`.pipeline`) and the preflight checks them (:mod:`.preflight`): both
read this one description, and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.schema import Manifest
from ..stages.defaults import STAGE_DEFAULTS
from ..stand_ins import STAND_IN_STAGES
from .methods import METHODS, STRENGTHS, Method, chosen_methods
from .plan import check_plan, deep_merge, load_stage_config, load_yaml
from .progress import fit_work


@dataclass(frozen=True)
class Task:
    """One task of a run (:meth:`Run.tasks`): a ``lightning fit`` or stage 2's ``test`` of a stage from
    its config file, a method's reconstruction, or the ridge yardstick; ``stage_dir`` is where it writes."""

    command: (
        str  # fit | test | strength | reconstruct | ridge: the word the console and the progress name it by
    )
    stage_dir: Path
    stage: str = ""  # fit and test: the stage's name in a plan (its overrides: stages.<stage>)
    config_file: str = ""  # fit and test: the stage config, a file name under the configs folder
    method: str = ""  # a method's tasks: its name (METHODS) ...
    seed: int = 0  # ... and seed; the shared tasks (stand-ins, ridge) run once, with seed 0


STAGE_CONFIGS = {
    "clip_pretrain": "clip_pretrain.yaml",
    "ldm_vq": "ldm_pretrain.yaml",
    "ldm_unet": "ldm_pretrain.yaml",
    "stage2": "stage2_align.yaml",
    "stage3": "stage3_ldm.yaml",
    "classifier": "classifier_pretrain.yaml",
}


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


class Run:
    """A plan run into ``out`` for some methods and seeds, described before anything runs: its tasks in
    order (:meth:`tasks`), the config each stage is run with (:meth:`stage_config`), the weights it is given
    and the work each task is planned to take. :class:`~lightning_fcae.runs.pipeline.Pipeline` runs it,
    :func:`~lightning_fcae.runs.preflight.preflight` checks it."""

    def __init__(
        self, plan: dict, out: Path, configs: Path, dry_run: bool = False, train_stand_ins: bool = False
    ):
        self.plan, self.out, self.configs, self.dry_run = plan, out, configs, dry_run
        check_plan(plan, known_stages=["stage1", "stage1_image", *STAGE_CONFIGS])
        self.data_dir = str(plan["data_dir"])
        self.use_shipped = bool(plan.get("stand_ins")) and not train_stand_ins
        self.stand_ins = None  # the shipped stand-ins once verified (Pipeline.__call__); None: trained here
        self.overrides = plan.get("stages") or {}

    def stage_config(self, stage: str, config_file: str, stage_dir: Path, seed: int, extra: dict) -> dict:
        """A stage's config as the run writes it (``STAGE/run.yaml``): the stage config laid on the shared
        defaults, then the plan's overrides, the seed and data, ``extra`` (what the tasks before it hand
        it), its outputs pointed into ``stage_dir``."""
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

    def tasks(self, methods: list[str], seeds: list[int]) -> list[Task]:
        """Every task of a run of ``methods`` x ``seeds``, in the order it runs: the one description of the
        chain. ``Pipeline.run_tasks`` runs them (feeding each what the ones before it made); :meth:`fits`
        (what the preflight checks) and :meth:`planned_work` (the progress) read them. The CLIP and LDM
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

    def fits(self, methods: list[str], seeds: list[int]) -> list[Task]:
        """Every ``lightning fit`` the run makes, in order (the stand-ins it trains first): what the
        preflight checks; the fit tasks of :meth:`tasks`."""
        return [task for task in self.tasks(methods, seeds) if task.command == "fit"]

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

    def planned_work(self, methods: list[str], seeds: list[int]) -> dict[str, float]:
        """Every task this run will go through (:meth:`tasks`), in order, weighed by the samples each
        processes (:mod:`lightning_fcae.runs.progress`)."""
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
