"""The `lightning-fcae data ...` commands as a user types them."""

from __future__ import annotations

import json

import pytest

from lightning_fcae.cli import main

from .nsd_fixture import write_fake_nsd


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_synth_inspect_check(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert _run(["data", "synth", "--profile", "tiny", "--out", str(out), "--seed", "3"]) == 0
    assert "train 346, val 38, test 96" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["source"]["seed"] == 3

    assert _run(["data", "inspect", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "subj01 (491 voxels)" in printed and "every shard matches its sha256" in printed
    assert (out / "inspect.png").stat().st_size > 0

    assert _run(["data", "check", str(out), "--n-way", "10"]) == 0
    assert "PixCorr" in capsys.readouterr().out

    # a second synth into the same place refuses instead of overwriting
    assert _run(["data", "synth", "--profile", "tiny", "--out", str(out)]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert _run(["data", "inspect", str(tmp_path / "nowhere")]) == 2
    assert "data synth" in capsys.readouterr().err


def test_nsd_conversion_from_the_command_line(tmp_path, capsys):
    info = write_fake_nsd(tmp_path / "nsd", subjects=(1, 2), sessions=1, coco_dir=tmp_path / "coco")
    out = tmp_path / "converted"
    argv = ["data", "nsd", "--root", str(tmp_path / "nsd"), "--subjects", "1", "2", "--out", str(out)]
    assert _run([*argv, "--coco", str(info["coco_dir"])]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["source"]["converter"] == "nsd"
