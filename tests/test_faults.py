"""Fault injection on the tiny profile: writes cut off half-way, real SIGKILLs of real subprocesses, and
damaged inputs. What is checked is what a user gets afterwards: the previous file whole, a rerun that
finishes with the same artefacts and an unbroken log, or one ``error:`` line naming the file and the fix."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_fcae.cli import main
from lightning_fcae.data.schema import Manifest
from lightning_fcae.files.checkpoint_io import AtomicCheckpointIO
from lightning_fcae.report.curves import training_losses
from lightning_fcae.runs.pipeline import Pipeline

from .conftest import write_toy_dataset
from .test_pipeline import tiny_plan
from .test_reconstruct import train_stage3
from .test_stand_ins import _fake_stand_ins

REPO = Path(__file__).resolve().parents[1]
SEED = 14  # where the kills land: a seeded draw, so a failure reruns the same way


class Killed(BaseException):
    """What a kill looks like from inside the writer: nothing after this point runs."""


def _die_half_way_to_disk(monkeypatch, other_file_system: bool) -> list[str]:
    """The process dies once half a checkpoint's bytes reached a file on disk, however the writer gets
    them there (``torch.save`` into a file, or copying a staged file). ``other_file_system``: the system
    temp folder is on another file system (a tmpfs ``/tmp``, a local disk under an NFS run folder), so a
    rename out of it fails with EXDEV and ``shutil.move`` copies into the target instead. Returns the
    list of the kills that happened."""
    kills = []

    def write_half_and_die(f, data: bytes) -> None:
        kills.append(str(f))
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(data[: len(data) // 2])
        else:
            f.write(data[: len(data) // 2])
        raise Killed

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, io.BytesIO):  # staged in memory: nothing on disk yet
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        write_half_and_die(f, buffer.getvalue())

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(
        shutil, "copyfile", lambda src, dst, **_: write_half_and_die(dst, Path(src).read_bytes())
    )
    if other_file_system:
        for name in ("rename", "replace"):
            monkeypatch.setattr(os, name, _same_folder_only(getattr(os, name)))
    return kills


def _same_folder_only(rename):
    """``rename`` as seen when every other folder is on another file system: moving across fails (EXDEV)."""

    def across(src, dst, *args, **kwargs):
        if Path(src).resolve().parent != Path(dst).resolve().parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return rename(src, dst, *args, **kwargs)

    return across


@pytest.mark.parametrize("other_file_system", [False, True], ids=["tmp-same-fs", "tmp-other-fs"])
def test_a_checkpoint_write_killed_half_way_leaves_the_previous_one_whole(
    tmp_path, monkeypatch, other_file_system
):
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(BoringModel())
    last = tmp_path / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last)
    before = last.read_bytes()
    kills = _die_half_way_to_disk(monkeypatch, other_file_system)
    with pytest.raises(Killed):
        trainer.save_checkpoint(last)
    monkeypatch.undo()
    assert kills, "the fault never fired"
    assert last.read_bytes() == before
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no temporary left behind


def test_the_next_write_removes_a_killed_writers_leftovers_and_keeps_a_live_writers(tmp_path):
    """A writer killed mid-write leaves ``.NAME.PID.tmp``; one killed between atomic_folder's two renames
    leaves ``.NAME.old``. The next process that writes into the folder deletes them, but never the temporary
    file of a writer that is still running, nor an ``.old`` folder whose new copy never arrived."""
    from lightning_fcae.files import atomic

    folder = tmp_path / "run"
    folder.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = folder / f".last.ckpt.{gone.pid}.tmp"
        live = folder / f".last.ckpt.{running.pid}.tmp"
        stale_export = folder / f".export.{gone.pid}.tmp"
        for path in (stale, live):
            path.write_bytes(b"half a checkpoint")
        stale_export.mkdir()
        (folder / "export").mkdir()
        (folder / ".export.old").mkdir()  # the swap finished: export is whole
        (folder / ".lost.old").mkdir()  # killed between the renames: the only copy, kept
        atomic.write_text(folder / "metrics.json", "{}")
        names = sorted(p.name for p in folder.iterdir())
        assert names == [f".last.ckpt.{running.pid}.tmp", ".lost.old", "export", "metrics.json"]
    finally:
        running.kill()
        running.wait()


def test_an_export_killed_half_way_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """FMRIReconstructionPipeline.save_pretrained writes through atomic_folder: killed while writing the
    weights, the folder still holds the previous export, which loads."""
    from lightning_fcae.inference.reconstruction_pipeline import FMRIReconstructionPipeline

    _, checkpoint = train_stage3(tmp_path, steps=1)
    pipe = FMRIReconstructionPipeline.from_pretrained(checkpoint)
    export = tmp_path / "export"
    pipe.save_pretrained(export)
    before = {p.relative_to(export): p.read_bytes() for p in export.rglob("*") if p.is_file()}

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(type(pipe.unet), "save_pretrained", killed)
    with pytest.raises(Killed):
        pipe.save_pretrained(export)
    monkeypatch.undo()
    assert {p.relative_to(export): p.read_bytes() for p in export.rglob("*") if p.is_file()} == before
    FMRIReconstructionPipeline.from_pretrained(export)


def test_every_cli_trainer_writes_checkpoints_atomically(toy_dataset, tmp_path):
    from lightning_fcae.cli.lightning_cli import FCAECLI
    from lightning_fcae.data.datamodule import NSDDataModule

    args = [
        f"--config={REPO / 'configs' / 'stage1_fcae.yaml'}",
        f"--config={REPO / 'configs' / 'profiles' / 'tiny.yaml'}",
        f"--data.data_dir={toy_dataset}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
    ]
    cli = FCAECLI(
        L.LightningModule,
        NSDDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=False,
    )
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# --- real SIGKILLs of real subprocesses ---------------------------------------------------------------


def _children() -> list[tuple[int, str]]:
    """(pid, command line) of this process's children, from every thread."""
    found = []
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline")
            with_args = cmdline.read_bytes().replace(b"\0", b" ").decode() if cmdline.exists() else ""
            found.append((int(pid), with_args))
    return found


def _wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc: Linux")
def test_a_stage_killed_at_a_random_point_resumes_to_the_end_with_its_whole_log(
    tmp_path, synthetic_tiny, monkeypatch
):
    """SIGKILL the ``lightning fit`` child of a pipeline stage after a random epoch's checkpoint (plus a
    random delay); the rerun resumes from last.ckpt, ends at the planned step and epoch, and the CSV
    history read by the report covers every step, the ones before the kill included."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    epochs, batches = 4, 2
    plan = tiny_plan(synthetic_tiny)
    plan["stages"]["stage1"]["trainer"] = {
        "max_epochs": epochs,
        "max_steps": -1,
        "limit_train_batches": batches,
        "limit_val_batches": 1,
        "log_every_n_steps": 1,
    }
    out = tmp_path / "run"
    pipeline = Pipeline(plan, out, REPO / "configs")
    stage = out / "fcae" / "seed0" / "stage1"
    rng = random.Random(SEED)
    kill_after_epoch, delay = rng.randrange(epochs - 2), rng.uniform(0, 0.1)

    def newest_epoch() -> int:
        epochs_saved = [
            int(m[1]) for p in stage.glob("checkpoints/epoch=*") if (m := re.match(r"epoch=(\d+)", p.name))
        ]
        return max(epochs_saved, default=-1)

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(pipeline.fit, "stage1", "stage1_fcae.yaml", stage, 0, {})
        _wait_for(lambda: newest_epoch() >= kill_after_epoch, f"the checkpoint of epoch {kill_after_epoch}")
        time.sleep(delay)
        (child,) = [pid for pid, command in _children() if "lightning_fcae fit" in command]
        os.kill(child, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"failed \(exit -9\)"):  # killed while it still ran
            first.result()
    assert not (stage / "done-fit.json").exists()

    last = Pipeline(plan, out, REPO / "configs").fit("stage1", "stage1_fcae.yaml", stage, 0, {})
    assert (stage / "done-fit.json").is_file()
    checkpoint = torch.load(last, weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (epochs - 1, epochs * batches)
    assert (stage / "csv" / "fit" / "metrics.part1.csv").is_file()  # the killed run's log, kept
    steps, _ = training_losses(stage)["train/loss"]
    assert sorted(set(steps)) == list(range(int(steps[0]), int(steps[0]) + epochs * batches)), steps


@pytest.fixture(scope="module")
def stage3(tmp_path_factory):
    """A textured dataset and a stage-3 checkpoint trained a step on it."""
    return train_stage3(tmp_path_factory.mktemp("faults"), steps=1)


def _reconstruct_args(stage3, out: Path) -> list[str]:
    data, ckpt = stage3
    return ["--ckpt", str(ckpt), "--data", str(data), "--out", str(out), "--batch-size", "2", "--no-progress"]


def test_reconstruct_killed_at_a_random_point_resumes_to_the_same_files(stage3, tmp_path, monkeypatch):
    """An uninterrupted run and one SIGKILLed after a random number of PNGs, then rerun: the same PNG
    bytes, grid and metrics; the PNGs written before the kill are kept, not redone."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.raises(SystemExit) as done:
        main(["reconstruct", *_reconstruct_args(stage3, tmp_path / "whole")])
    assert done.value.code == 0
    whole = {p.relative_to(tmp_path / "whole"): p.read_bytes() for p in (tmp_path / "whole").rglob("*.png")}
    assert len([p for p in whole if p.parts[0] == "images"]) == 16

    out = tmp_path / "killed"
    at = random.Random(SEED).randint(1, 8)  # of 16 reconstructions
    command = [sys.executable, "-m", "lightning_fcae", "reconstruct", *_reconstruct_args(stage3, out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: len(list(out.glob("images/*.png"))) >= at, f"{at} reconstructions")
    finally:
        process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # it was still running
    before_kill = {p: p.stat().st_mtime_ns for p in out.glob("images/*.png")}
    assert not (out / "metrics.json").exists()

    with pytest.raises(SystemExit) as done:
        main(["reconstruct", *_reconstruct_args(stage3, out)])
    assert done.value.code == 0
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")} == whole
    assert json.loads((out / "metrics.json").read_text()) == json.loads(
        (tmp_path / "whole/metrics.json").read_text()
    )
    assert {p: p.stat().st_mtime_ns for p in before_kill} == before_kill  # resumed, not redone


# --- damaged inputs: one named error line, exit 2, no traceback ---------------------------------------


def _cut(path: Path, keep: float = 0.5) -> Path:
    """``path`` cut off as a crash mid-write or a half copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _stage1(data: Path, tmp_path: Path, *extra: str) -> list[str]:
    configs = REPO / "configs"
    return [
        "fit",
        f"--config={configs / 'stage1_fcae.yaml'}",
        f"--config={configs / 'profiles' / 'tiny.yaml'}",
        f"--data.data_dir={data}",
        f"--trainer.default_root_dir={tmp_path}",
        *extra,
    ]


def _damaged_shard(tmp_path, stage3):
    data = write_toy_dataset(tmp_path / "toy")
    shard = _cut(data / Manifest.load(data).splits["train"].shards[0].path)
    return _stage1(data, tmp_path), shard, "truncated or replaced"


def _damaged_manifest(tmp_path, stage3):
    data = write_toy_dataset(tmp_path / "toy")
    return _stage1(data, tmp_path), _cut(data / "manifest.json"), "not valid JSON"


def _damaged_norm_stats(tmp_path, stage3):
    data = write_toy_dataset(tmp_path / "toy")
    return _stage1(data, tmp_path), _cut(data / "norm_stats.npz"), "damaged or replaced"


def _damaged_resume_checkpoint(tmp_path, stage3):
    data = write_toy_dataset(tmp_path / "toy")
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, ckpt)
    return _stage1(data, tmp_path, f"--ckpt_path={_cut(ckpt)}"), ckpt, "delete it to start the run"


def _damaged_stage_checkpoint(tmp_path, stage3):
    data, ckpt = stage3
    cut = tmp_path / "stage3.ckpt"
    cut.write_bytes(ckpt.read_bytes())
    return (
        ["reconstruct", *_reconstruct_args((data, _cut(cut)), tmp_path / "out")],
        cut,
        "re-run the stage that wrote it",
    )


def _damaged_previous_stage_checkpoint(tmp_path, stage3):
    data = write_toy_dataset(tmp_path / "toy")
    ckpt = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, ckpt)
    argv = [
        "fit",
        f"--config={REPO / 'configs' / 'stage2_align.yaml'}",
        f"--data.data_dir={data}",
        f"--model.encoder_ckpt={_cut(ckpt)}",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    return argv, ckpt, "re-run the stage that wrote it"


def _damaged_clip_export(tmp_path, stage3):
    clip = tmp_path / "clip.pt"
    torch.save({"w": torch.zeros(1000)}, clip)
    argv = [*_reconstruct_args(stage3, tmp_path / "out"), "--clip-model", "fcae-clip-tiny"]
    return ["reconstruct", *argv, "--clip-pretrained", str(_cut(clip))], clip, "rerun the pipeline"


def _damaged_ldm_export(tmp_path, stage3):
    from safetensors.torch import save_file

    ldm = tmp_path / "ldm"
    for part in ("vqvae", "unet", "scheduler"):
        (ldm / part).mkdir(parents=True)
    weights = ldm / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({"w": torch.zeros(1000)}, weights)
    _cut(weights)
    argv = [
        "fit",
        f"--config={REPO / 'configs' / 'stage3_ldm.yaml'}",
        f"--data.data_dir={stage3[0]}",
        f"--model.pretrained_ldm={ldm}",
        "--model.encoder_ckpt=null",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    return argv, weights, "rerun the pipeline"


def _damaged_shipped_stand_in(tmp_path, stage3):
    from lightning_fcae.stand_ins.shipped import dataset_identity

    root = _fake_stand_ins(tmp_path / "stand-ins", dataset_identity(Manifest.load(stage3[0])))
    weights = _cut(root / "clip" / "fcae-clip-tiny.safetensors")
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"data_dir": str(stage3[0]), "stand_ins": str(root)}))
    return ["pipeline", "--plan", str(plan), "--out", str(tmp_path / "run")], weights, "make stand-ins"


@pytest.mark.parametrize(
    "damage",
    [
        _damaged_shard,
        _damaged_manifest,
        _damaged_norm_stats,
        _damaged_resume_checkpoint,
        _damaged_stage_checkpoint,
        _damaged_previous_stage_checkpoint,
        _damaged_clip_export,
        _damaged_ldm_export,
        _damaged_shipped_stand_in,
    ],
    ids=lambda f: f.__name__.removeprefix("_damaged_"),
)
def test_a_damaged_input_is_one_named_error_line(damage, tmp_path, stage3, capsys, monkeypatch):
    """Each kind of damaged file read by a command is named, with the fix, in one ``error:`` line."""
    monkeypatch.chdir(tmp_path)  # configs' relative defaults (checkpoints/...) land here
    argv, damaged, fix = damage(tmp_path, stage3)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert str(damaged) in line and fix in line, line
