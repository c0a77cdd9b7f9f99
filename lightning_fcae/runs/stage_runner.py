"""One stage of a run as a subprocess, ``python -m lightning_fcae fit --config STAGE/run.yaml``: skipped
when it finished with this very config, resumed from its last checkpoint when it was interrupted, refused
when its config changed; and what a killed fit leaves behind (its CSV history, the checkpoint it resumes
from)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import yaml

from ..files import atomic
from .plan import PlanError, changed_keys
from .progress import Progress
from .run_lock import die_with_parent
from .tasks import Run

BEST_CHECKPOINT = "best.ckpt"  # BestCheckpoint's file, beside last.ckpt


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


class StageRunner(Run):
    """Runs a :class:`~lightning_fcae.runs.tasks.Run`'s stages one command at a time, keeping the progress
    and which stage is under way (what an interruption leaves half done)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress = Progress({})  # the planned work, once the methods and seeds are known
        self.running: str | None = None  # the stage under way: what an interruption leaves half done

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
