"""The shipped stand-ins: they load and match their hashes; damage and misuse are named errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lightning_fcae.cli.stand_ins import main as stand_ins_main
from lightning_fcae.models.clip import load_clip
from lightning_fcae.models.ldm import load_ldm
from lightning_fcae.models.scene_classifier import SceneClassifier
from lightning_fcae.runs.pipeline import Pipeline
from lightning_fcae.stand_ins import StandInError, load_stand_ins
from lightning_fcae.stand_ins.shipped import dataset_identity, write_manifest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "stand-ins" / "synthetic-small"


def test_shipped_stand_ins_match_their_hashes_and_load():
    stand_ins = load_stand_ins(SHIPPED)
    recorded = json.loads((SHIPPED / "manifest.json").read_text())["files"]
    assert len(recorded) >= 12 and sum((SHIPPED / f).stat().st_size for f in recorded) < 30e6
    clip = load_clip(stand_ins.clip_model, str(stand_ins.clip_weights))
    ldm = load_ldm(stand_ins.ldm)
    classifier = SceneClassifier.from_pretrained(stand_ins.classifier)
    # stored in float16, loaded in float32; the LDM's condition takes the CLIP's token grid
    assert next(ldm.unet.parameters()).dtype == torch.float32
    assert (
        ldm.condition.config.clip_tokens == clip.num_tokens
        and ldm.condition.config.clip_dim == clip.embed_dim
    )
    assert classifier.config.num_shapes == 10
    for card in ("clip", "ldm/vqvae", "ldm/unet", "classifier"):
        text = (SHIPPED / card / "CARD.md").read_text()
        assert "sha256" in text and "make stand-ins" in text and "Checks" in text, card


def _fake_stand_ins(root: Path, dataset: dict) -> Path:
    for name in ("clip/fcae-clip-tiny.safetensors", "ldm/unet/config.json", "classifier/config.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())
    write_manifest(root, "fcae-clip-tiny", dataset)
    return root


def test_damaged_or_missing_files_are_named_errors_that_say_how_to_regenerate(tmp_path, synthetic_tiny):
    from lightning_fcae.data.schema import Manifest

    dataset = dataset_identity(Manifest.load(synthetic_tiny))
    root = _fake_stand_ins(tmp_path / "stand-ins", dataset)
    assert load_stand_ins(root, synthetic_tiny).clip_model == "fcae-clip-tiny"
    (root / "ldm/unet/config.json").write_text("{}")  # altered
    with pytest.raises(StandInError, match=r"unet/config.json does not match its sha256.*make stand-ins"):
        load_stand_ins(root)
    (root / "ldm/unet/config.json").unlink()
    with pytest.raises(StandInError, match=r"unet/config.json is missing.*git checkout"):
        load_stand_ins(root)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(StandInError, match="damaged"):
        load_stand_ins(root)
    with pytest.raises(StandInError, match="no manifest.json"):
        load_stand_ins(tmp_path / "nowhere")


def test_stand_ins_refuse_a_dataset_they_were_not_trained_on(tmp_path, synthetic_tiny):
    root = _fake_stand_ins(tmp_path / "stand-ins", {"name": "synthetic-small", "source": {"seed": 0}})
    with pytest.raises(StandInError, match="were trained on synthetic-small.*--train-stand-ins"):
        load_stand_ins(root, synthetic_tiny)
    # the pipeline checks before running anything, and says it in one line
    plan = {"data_dir": str(synthetic_tiny), "stand_ins": str(root)}
    with pytest.raises(StandInError):
        Pipeline(plan, tmp_path / "run", REPO / "configs", dry_run=True)(["fcae"], [0])
    assert not (tmp_path / "run").exists()


def test_verify_command_reports_in_one_line(tmp_path, synthetic_tiny, capsys):
    from lightning_fcae.data.schema import Manifest

    root = _fake_stand_ins(tmp_path / "stand-ins", dataset_identity(Manifest.load(synthetic_tiny)))
    assert stand_ins_main(["verify", str(root), "--data", str(synthetic_tiny)]) == 0
    assert "matches its sha256" in capsys.readouterr().out
    shutil.rmtree(root / "classifier")
    assert stand_ins_main(["verify", str(root)]) == 2
    assert capsys.readouterr().err.startswith("error: stand-in file")


def test_train_ships_cards_checks_and_hashes_that_load(tmp_path, synthetic_tiny, monkeypatch, capsys):
    """`make stand-ins` end to end on the tiny profile (two steps per stand-in): the folder it writes
    verifies, its cards carry the checks and hashes, and a pipeline plan can use it."""
    from lightning_fcae.runs.plan import deep_merge

    from .test_pipeline import FAST, TINY_IMAGES, tiny_plan

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the stand-ins train in subprocesses
    plan = tiny_plan(synthetic_tiny)
    plan["stages"]["classifier"] = deep_merge(TINY_IMAGES, FAST)
    path = tmp_path / "plan.yaml"
    path.write_text(__import__("yaml").safe_dump(plan))
    out = tmp_path / "stand-ins"
    args = ["train", "--plan", str(path), "--runs", str(tmp_path / "runs"), "--out", str(out)]
    assert stand_ins_main([*args, "--configs", str(REPO / "configs")]) == 0
    starts = [line.split(" · ")[0] for line in capsys.readouterr().out.splitlines() if " · " in line]
    assert starts == ["[1/4", "[2/4", "[3/4", "[4/4"]  # every stand-in's task was planned
    stand_ins = load_stand_ins(out, synthetic_tiny)
    figures = json.loads((out / "checks.json").read_text())
    assert figures["test_images"] == 48 and 0 <= figures["samples"]["caption"]["shape"] <= 1
    card = (out / "ldm" / "unet" / "CARD.md").read_text()
    assert "eps-MSE" in card and "2 steps" in card and "diffusion_pytorch_model.safetensors" in card
    assert (out / "ldm" / "unet" / "run.yaml").is_file() and stand_ins.clip_model == "fcae-clip-tiny"
    # float16 on disk
    from safetensors.torch import load_file

    assert load_file(stand_ins.clip_weights)["logit_scale"].dtype == torch.float16
    # a plan naming them runs without training any stand-in
    pipeline = Pipeline(plan | {"stand_ins": str(out)}, tmp_path / "run", REPO / "configs", dry_run=True)
    pipeline(["fcae"], [0])
    assert not (tmp_path / "run" / "shared").exists()
    stage3 = __import__("yaml").safe_load((tmp_path / "run/fcae/seed0/stage3/run.yaml").read_text())
    assert stage3["model"]["init_args"]["pretrained_ldm"] == str(out / "ldm")


def test_a_card_says_when_its_training_was_resumed(tmp_path):
    from lightning_fcae.stand_ins.cards import Training

    (tmp_path / "run.yaml").write_text("trainer: {max_epochs: -1, max_steps: 900}\n")
    done = {"seconds": 60.0, "command": ["python", "-m", "lightning_fcae", "fit", "--config", "run.yaml"]}
    (tmp_path / "done-fit.json").write_text(json.dumps(done))
    training = Training("ldm_vq", tmp_path)
    assert (training.steps, training.seconds, training.resumed) == ("900 steps", 60.0, False)
    done["command"] += ["--ckpt_path", "checkpoints/last.ckpt"]
    (tmp_path / "done-fit.json").write_text(json.dumps(done))
    assert training.resumed
