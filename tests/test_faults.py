"""Fault injection on the tiny profile: writes cut off half-way, real SIGKILLs of real subprocesses, and
damaged inputs. What is checked is what a user gets afterwards: the previous file whole, a rerun that
finishes with the same artefacts and an unbroken log, or one ``error:`` line naming the file and the fix."""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_fcae.atomic import AtomicCheckpointIO

REPO = Path(__file__).resolve().parents[1]


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


def test_every_cli_trainer_writes_checkpoints_atomically(toy_dataset, tmp_path):
    from lightning_fcae.cli import FCAECLI
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
