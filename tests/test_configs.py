"""Every shipped config parses through the CLI (alone and with each profile or ablation it is meant for)
and its model builds: a typo in a YAML no run uses day to day fails here, not after a GPU queue."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from lightning_fcae.cli import run_lightning_cli
from lightning_fcae.stages.defaults import STAGE_DEFAULTS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGE_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml"))
STAGE1 = [name for name in STAGE_CONFIGS if name.startswith("stage1_")]
# each stage config alone, and each extra config on the stages it is written for
LAYERS = [(stage, None) for stage in STAGE_CONFIGS]
LAYERS += [(stage, f"profiles/{profile}.yaml") for stage in STAGE1 for profile in ("tiny", "paper")]
LAYERS += [
    ("stage2_align.yaml", f"ablations/{p.name}") for p in sorted((CONFIGS / "ablations").glob("*.yaml"))
]
# what every stage's trainer shares, said once in the package (not in configs/)
SHARED = yaml.safe_load(STAGE_DEFAULTS.read_text())["trainer"]
# files a run reads but a parse does not need: pointed nowhere, so the model builds from scratch
NO_FILES = {"encoder_ckpt": None, "pretrained_ldm": None, "init_ckpt": None}


def parsed_config(capsys, *files: str | None) -> dict:
    """The config LightningCLI resolves from ``files`` (``--print_config``: parsed and type-checked,
    nothing instantiated)."""
    args = ["fit", *(f"--config={CONFIGS / f}" for f in files if f), "--print_config"]
    with pytest.raises(SystemExit) as exit_:
        run_lightning_cli(args)
    assert exit_.value.code == 0, capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


def build_model(config: dict, num_voxels: int = 80):
    """The config's LightningModule, built from its class path and arguments."""
    module, _, name = config["model"]["class_path"].rpartition(".")
    args = config["model"]["init_args"]
    args = {**args, **{k: v for k, v in NO_FILES.items() if k in args}, "num_voxels": num_voxels}
    return getattr(importlib.import_module(module), name)(**args)


def assert_laid_on_stage_defaults(config: dict, stage: str) -> None:
    """The resolved trainer is stage_defaults.yaml's with the stage's own parts: its callbacks begin with
    the shared ones (each once), end with the StageCheckpoint that ``--trainer.callbacks.init_args.dirpath``
    moves (the sweeps do), and its logger is the shared one under the stage's name."""
    trainer = config["trainer"]
    callbacks, shared = trainer["callbacks"], SHARED["callbacks"]
    assert [c["class_path"] for c in callbacks[: len(shared)]] == [c["class_path"] for c in shared], stage
    for got, want in zip(callbacks, shared):
        assert want.get("init_args", {}).items() <= got.get("init_args", {}).items(), stage
    paths = [c["class_path"] for c in callbacks]
    assert len(paths) == len(set(paths)), f"{stage}: a callback twice: {paths}"
    assert paths[-1] == "lightning_fcae.stages.checkpointing.StageCheckpoint", stage
    assert callbacks[-1]["init_args"]["dirpath"] == f"checkpoints/{Path(stage).stem}"
    logger = trainer["logger"]
    assert logger["class_path"] == SHARED["logger"]["class_path"], stage
    assert SHARED["logger"]["init_args"].items() <= logger["init_args"].items(), stage
    assert logger["init_args"]["name"] == Path(stage).stem
    assert trainer["log_every_n_steps"] == SHARED["log_every_n_steps"]


def test_stage_configs_do_not_restate_the_shared_trainer():
    """What stage_defaults.yaml says is said there only: a stage config adds its own callbacks with
    ``callbacks+`` (a plain ``callbacks:`` would drop the shared ones) and names only its logger run."""
    for name in STAGE_CONFIGS:
        trainer = yaml.safe_load((CONFIGS / name).read_text())["trainer"]
        assert "callbacks" not in trainer and "callbacks+" in trainer, name
        named = [c["class_path"] for c in trainer["callbacks+"]]
        assert not set(named) & {c["class_path"] for c in SHARED["callbacks"]}, name
        assert set(trainer["logger"]) == {"init_args"}, name
        assert not set(trainer) & (set(SHARED) - {"callbacks", "logger"}), name


def test_every_config_file_is_covered():
    layered = {extra for _, extra in LAYERS if extra}
    shipped = {
        p.relative_to(CONFIGS).as_posix() for p in CONFIGS.glob("*/*.yaml") if p.parent.name != "sweeps"
    }
    assert shipped <= layered, shipped - layered


@pytest.mark.parametrize(("stage", "extra"), LAYERS, ids=[f"{s}+{e}" for s, e in LAYERS])
def test_config_parses_and_its_model_builds(stage, extra, capsys):
    config = parsed_config(capsys, stage, extra)
    assert_laid_on_stage_defaults(config, stage)
    overrides = yaml.safe_load((CONFIGS / extra).read_text()) if extra else {}
    for key, value in (overrides.get("model") or {}).get("init_args", {}).items():
        assert config["model"]["init_args"][key] == value, key  # the layer landed
    if extra == "profiles/paper.yaml" or config["model"]["init_args"].get("ldm_config") == "demo":
        return  # parsed and type-checked; building ViT-B or the demo LDM adds seconds and nothing more
    model = build_model(config)
    assert sum(p.numel() for p in model.parameters()) > 0
