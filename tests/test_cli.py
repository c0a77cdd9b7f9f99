"""The `lightning-fcae data ...` commands as a user types them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_fcae.cli import main
from lightning_fcae.data.check import check_dataset
from lightning_fcae.data.inspect import CAPTION_LINES, TILE, inspect_dataset
from lightning_fcae.data.schema import Manifest, ShardIntegrityError

from .conftest import write_toy_dataset
from .nsd_fixture import write_fake_nsd

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "profiles" / "tiny.yaml"


def _run(argv: list[str] | None) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_synth_inspect_check(tmp_path, capsys, monkeypatch):
    out = tmp_path / "tiny"
    assert _run(["data", "synth", "--profile", "tiny", "--out", str(out), "--seed", "3"]) == 0
    assert "train 346, val 38, test 96" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["source"]["seed"] == 3

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(p.name for p in out.iterdir())
    assert _run(["data", "inspect", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "subj01 (491 voxels)" in printed and "every shard matches its sha256" in printed
    # the grid goes to the working directory, never into the dataset (it may be read-only or shared)
    assert sorted(p.name for p in out.iterdir()) == before and "grid: inspect.png" in printed
    with Image.open(work / "inspect.png") as grid:  # 16 samples: 4 x 4 tiles, captions under them
        assert grid.size == (4 * (TILE + 8), 4 * (TILE + 8 + CAPTION_LINES * 12))
        under = np.asarray(grid.convert("L"))[4 + TILE + 2 : TILE + 8 + CAPTION_LINES * 12, 4 : 4 + TILE]
        assert (under < 128).any(), "no caption text under the first image"
    assert _run(["data", "inspect", str(out), "--out", str(tmp_path / "elsewhere" / "grid.png")]) == 0
    assert (tmp_path / "elsewhere" / "grid.png").is_file()

    assert _run(["data", "check", str(out), "--n-way", "10"]) == 0
    assert "PixCorr" in capsys.readouterr().out

    # a second synth into the same place refuses instead of overwriting
    assert _run(["data", "synth", "--profile", "tiny", "--out", str(out)]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_synth_makes_fewer_samples_on_request(tmp_path, capsys):
    """A smaller dataset of a profile's shape (the paper profile takes ~10-30 minutes at full size)."""
    out = tmp_path / "small-tiny"
    argv = [
        "data",
        "synth",
        "--profile",
        "tiny",
        "--out",
        str(out),
        "--train-images",
        "20",
        "--test-images",
        "4",
    ]
    assert _run(argv) == 0
    assert "train 36, val 4, test 8" in capsys.readouterr().out  # 2 subjects, 10% of 20 to val
    profile = json.loads((out / "manifest.json").read_text())["source"]["profile"]
    assert (profile["name"], profile["train_images"], profile["test_images"]) == ("tiny", 20, 4)
    assert _run(["data", "synth", "--out", str(tmp_path / "x"), "--train-images", "5"]) == 2
    assert capsys.readouterr().err == "error: data synth: train-images must be >= 10 (val takes 10%), got 5\n"


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert _run(["data", "inspect", str(tmp_path / "nowhere")]) == 2
    assert "data synth" in capsys.readouterr().err
    (tmp_path / "shards-only").mkdir()  # e.g. an interrupted write: shards but no manifest
    assert _run(["data", "inspect", str(tmp_path / "shards-only")]) == 2
    err = capsys.readouterr().err
    assert "manifest.json is missing" in err and "data synth" in err and "data nsd" in err


def test_truncated_shard_is_a_named_error(tmp_path, capsys):
    root = write_toy_dataset(tmp_path / "toy")
    manifest = Manifest.load(root)
    shard = root / manifest.splits["train"].shards[0].path
    shard.write_bytes(shard.read_bytes()[:20000])
    # inspect compares sizes with the manifest even without --verify; check reads nothing broken
    with pytest.raises(ShardIntegrityError, match=f"{shard.name}: 20000 bytes"):
        inspect_dataset(root, grid=tmp_path / "grid.png")
    assert _run(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and shard.name in err and "Traceback" not in err
    # a manifest (wrongly) matching the cut file: reading the tar still names the shard
    manifest.splits["train"].shards[0].bytes = shard.stat().st_size
    manifest.save(root)
    with pytest.raises(ShardIntegrityError, match=f"{shard.name}.*truncated"):
        check_dataset(root)


def test_inspect_names_a_bad_caption_or_image(tmp_path):
    from lightning_fcae.data.schema import SampleError

    from .test_datamodule import _mutate_first_sample

    root = write_toy_dataset(tmp_path / "toy")
    _mutate_first_sample(root, lambda s: s.update({"captions.json": b"[]"}), split="test")
    with pytest.raises(SampleError, match="subj01_nsd.*captions"):  # was an IndexError
        inspect_dataset(root, grid=tmp_path / "grid.png")
    _mutate_first_sample(
        root, lambda s: s.update({"captions.json": b'["a"]', "image.png": b"?"}), split="test"
    )
    with pytest.raises(SampleError, match=r"subj01_nsd\d+: image does not decode \(not a PNG or JPEG\)"):
        inspect_dataset(root, grid=tmp_path / "grid.png")


@pytest.mark.parametrize("n_way", ["0", "1"])
def test_check_rejects_n_way_below_two(tmp_path, capsys, n_way):
    assert _run(["data", "check", str(tmp_path / "any"), "--n-way", n_way]) == 2
    assert "n_way must be >= 2" in capsys.readouterr().err


def test_nsd_conversion_from_the_command_line(tmp_path, capsys):
    info = write_fake_nsd(tmp_path / "nsd", subjects=(1, 2), sessions=1, coco_dir=tmp_path / "coco")
    out = tmp_path / "converted"
    argv = ["data", "nsd", "--root", str(tmp_path / "nsd"), "--subjects", "1", "2", "--out", str(out)]
    assert _run([*argv, "--coco", str(info["coco_dir"])]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["source"]["converter"] == "nsd"


def test_fit_setup_mistakes_are_one_error_line(toy_dataset, tmp_path, monkeypatch, capsys):
    """A missing dataset, a missing checkpoint or a setting the package refuses is found while
    LightningCLI builds the classes, and jsonargparse wraps it in a second traceback of its own: the
    user gets the first error's message on one line instead."""
    monkeypatch.chdir(tmp_path)
    stage1 = ["fit", f"--config={REPO / 'configs' / 'stage1_fcae.yaml'}", f"--config={TINY}"]
    stage2 = ["fit", f"--config={REPO / 'configs' / 'stage2_align.yaml'}", f"--data.data_dir={toy_dataset}"]
    for argv, message in (
        ([*stage1, f"--data.data_dir={tmp_path / 'nowhere'}"], "error: dataset directory"),
        (
            [*stage1, f"--data.data_dir={toy_dataset}", "--data.batch_size=0"],
            "error: batch_size must be >= 1",
        ),
        # a stage whose input checkpoint is missing says which stage writes it, and how
        (
            [*stage2, "--model.encoder_ckpt=missing.ckpt"],
            "error: encoder_ckpt missing.ckpt does not exist: run stage 1 (`lightning fit --config "
            "configs/stage1_fcae.yaml` writes checkpoints/stage1_fcae/last.ckpt",
        ),
        # predict keeps nothing from the command line without a writer: refused before sampling
        (
            ["predict", *stage1[1:], f"--data.data_dir={toy_dataset}"],
            "error: `predict` from the command line",
        ),
    ):
        assert _run(argv) == 2
        err = capsys.readouterr().err  # Lightning's INFO lines may come first: it is imported lazily
        last = err.splitlines()[-1]  # the error is the last line, nothing printed after it
        assert last.startswith(message) and last.endswith(
            "(LIGHTNING_FCAE_TRACEBACK=1 shows where it was raised)"
        )
        assert "Traceback" not in err, err[-500:]


def test_a_saved_config_naming_a_moved_module_says_where_it_went(toy_dataset, tmp_path, monkeypatch, capsys):
    """A run folder saved before the package root was grouped into folders (issue 24) names e.g.
    ``lightning_fcae.loggers.WandbLogger`` in its run.yaml: fitting it names the module's new path (in
    jsonargparse's error, after the usage), and so does importing the old module in Python."""
    monkeypatch.chdir(tmp_path)
    saved = tmp_path / "run.yaml"
    saved.write_text(
        "model:\n  class_path: lightning_fcae.stages.FCAEPretrain\n  init_args: {size: tiny}\n"
        "data:\n  class_path: lightning_fcae.data.datamodule.NSDDataModule\n"
        f"  init_args: {{data_dir: {toy_dataset}}}\n"
        "trainer:\n  fast_dev_run: true\n  logger:\n    class_path: lightning_fcae.loggers.WandbLogger\n"
    )
    assert _run(["fit", f"--config={saved}"]) == 2
    moved = (
        "lightning_fcae.loggers moved to lightning_fcae.stages.loggers: edit the class_path in your config"
    )
    assert moved in capsys.readouterr().err
    with pytest.raises(
        ModuleNotFoundError, match="lightning_fcae.pipeline moved to lightning_fcae.runs.pipeline"
    ):
        import lightning_fcae.pipeline  # noqa: F401


def test_help_lists_the_extra_subcommands(capsys, monkeypatch):
    assert _run(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in ("data", "pipeline", "reconstruct", "report", "convert-ldm"))
    assert "lightning-fcae fit --help" in out  # where LightningCLI's own help is
    monkeypatch.setattr(sys, "argv", ["lightning-fcae", "fit", "--help"])  # as LightningCLI reads it
    assert _run(None) == 0
    assert "--trainer" in capsys.readouterr().out


# a fresh interpreter, as the console script runs: did asking for help import torch?
HELP_IMPORTS = """
import contextlib, io, sys
from lightning_fcae.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main(sys.argv[1:])
    except SystemExit as done:
        code = done.code
print(code, "torch" in sys.modules, "lightning" in sys.modules, "usage" in out.getvalue() or "each with" in out.getvalue())
"""


@pytest.mark.parametrize(
    "command",
    [
        "",
        "pipeline",
        "reconstruct",
        "report",
        "stand-ins",
        "stand-ins check",
        "convert-ldm",
        "data",
        "data inspect",
    ],
)
def test_help_is_instant_it_imports_no_torch(command):
    argv = [*command.split(), "--help"]
    done = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS, *argv], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert done.stdout.split() == ["0", "False", "False", "True"], done.stdout + done.stderr


def test_reconstruct_help_shows_the_defaults(capsys):
    assert _run(["reconstruct", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option, default in (("--split", "test"), ("--batch-size", "16"), ("--seed", "0"), ("--n-way", "50")):
        assert re.search(rf"{option} \S+ .*?\(default: {default}\)", out), option
    assert "reconstructions per sample (default: 1)" in out


def test_wandb_is_offline_unless_logged_in_to_the_configured_server(tmp_path, monkeypatch):
    from lightning_fcae.cli.commands import default_wandb_mode

    netrc = tmp_path / "netrc"
    netrc.write_text("machine wandb.example.org\n  login user\n  password key\n")
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for base_url, mode in ((None, "offline"), ("https://wandb.example.org", None)):
        monkeypatch.delenv("WANDB_MODE", raising=False)
        if base_url:
            monkeypatch.setenv("WANDB_BASE_URL", base_url)
        default_wandb_mode()
        assert os.environ.get("WANDB_MODE") == mode, base_url


def test_what_every_stage_printed_for_nothing_is_silenced(caplog):
    """Lightning's litlogger tip and LeafSpec FutureWarning, and wandb's 'anonymous setting has no
    effect' (answering the anonymous=None Lightning's WandbLogger always passes) are gone; other
    rank-zero messages stay."""
    import logging
    import warnings

    from lightning_fcae.cli.lightning_cli import RANK_ZERO_LOGGERS, silence_known_noise
    from lightning_fcae.stages.loggers import WandbLogger

    silence_known_noise()
    with caplog.at_level(logging.INFO):
        for name in RANK_ZERO_LOGGERS:
            logging.getLogger(name).info("💡 Tip: For seamless cloud logging ... litlogger")
            logging.getLogger(name).info("GPU available: False")
    assert "litlogger" not in caplog.text and caplog.text.count("GPU available") == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        silence_known_noise()  # catch_warnings reset the filters
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
    assert not caught
    assert "anonymous" not in WandbLogger(project="p", offline=True)._wandb_init
