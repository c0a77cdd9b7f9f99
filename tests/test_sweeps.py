"""A W&B sweep's command line must keep working: run each sweep's command with sampled values."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import yaml

from lightning_fcae.cli import run_lightning_cli

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def sample(parameters: dict, rng: random.Random) -> dict:
    """One draw per parameter, as a W&B agent would make (grid values or a log-uniform range)."""
    values = {}
    for name, spec in parameters.items():
        if "values" in spec:
            values[name] = rng.choice(spec["values"])
        elif spec.get("distribution") == "log_uniform_values":
            values[name] = math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"])))
        else:
            raise AssertionError(f"{name}: unsupported sweep parameter {spec}")
    return values


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The argv W&B builds from ``command``: ${env} dropped, ${args} -> --name=value."""
    argv = []
    for part in sweep["command"]:
        if part == "${env}":
            continue
        if part == "${args}":
            argv += [f"--{name}={value}" for name, value in values.items()]
        else:
            argv.append(part)
    return argv


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_command_runs(path, toy_dataset, tmp_path, monkeypatch):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["metric"]["name"] and sweep["method"] in ("grid", "random", "bayes")
    values = sample(sweep["parameters"], random.Random(0))
    argv = agent_command(sweep, values)
    assert argv[:2] == ["lightning", "fit"]
    config = REPO / argv[argv.index("--config") + 1]
    assert config.exists(), config
    monkeypatch.chdir(tmp_path)
    profile = [] if "stage2" in config.name else [f"--config={REPO / 'configs' / 'profiles' / 'tiny.yaml'}"]
    overrides = [
        f"--data.data_dir={toy_dataset}",
        "--data.num_workers=0",
        "--trainer.fast_dev_run=true",
    ]
    if "stage2" in config.name:  # no stage-1 checkpoint or CLIP weights in a test: tiny random ones
        overrides += [
            "--model.clip_model=fcae-clip-tiny",
            "--model.clip_pretrained=null",
            "--data.image_size=32",
            "--model.encoder_ckpt=null",
            "--model.clip_tokens=17",
        ]
    args = ["fit", f"--config={config}", *profile, *overrides, *argv[argv.index("--config") + 2 :]]
    cli = run_lightning_cli(args)
    assert cli.trainer.state.finished
    for name, value in values.items():
        assert cli.model.hparams[name.split(".")[-1]] == pytest.approx(value)
    # a sweep's runs never replace the checkpoint the next stage reads
    assert cli.trainer.checkpoint_callback.dirpath.endswith(f"checkpoints/sweeps/{path.stem}")
