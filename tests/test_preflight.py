"""lightning-fcae pipeline --check: the preflight names every problem in one pass, before any stage runs."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from lightning_fcae.cli.pipeline import main
from lightning_fcae.data.schema import Manifest
from lightning_fcae.runs.pipeline import Pipeline
from lightning_fcae.runs.preflight import preflight
from lightning_fcae.runs.preflight_findings import Findings
from tests.test_pipeline import tiny_plan, write_plan

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def check(tmp_path: Path, plan: dict, capsys, *extra: str) -> tuple[int, str, str]:
    code = main(
        ["--plan", str(write_plan(tmp_path, plan)), "--out", str(tmp_path / "run"), "--check", *extra]
    )
    out, err = capsys.readouterr()
    return code, out, err


def problems(err: str) -> list[str]:
    return [line.removeprefix("problem: ") for line in err.splitlines() if line.startswith("problem: ")]


def test_the_tiny_plan_passes(tmp_path, synthetic_tiny, capsys):
    code, out, err = check(tmp_path, tiny_plan(synthetic_tiny), capsys, "--methods", "fcae", "visdec")
    assert code == 0, err
    assert out.splitlines()[-1].startswith("preflight OK")
    assert f"ok: dataset {synthetic_tiny}: manifest, norm stats" in out and "sizes and sha256" in out
    assert "ok: CLIP fcae-clip-tiny (trained by this run): 17 x 512 image tokens" in out
    assert "ok: LDM ldm_config tiny (trained by this run): 16 px" in out
    assert "ok: disk: the run's checkpoints and the CLIP feature cache need about" in out
    assert not (tmp_path / "run").exists()  # a check writes nothing


def test_missing_weights_and_a_token_mismatch_are_named_in_one_pass(tmp_path, synthetic_tiny, capsys):
    """Weights the plan names but that are not there, and a clip_tokens that does not fit the CLIP: the
    CLIP's grid comes from its architecture when its file is missing, so all three are found at once."""
    plan = tiny_plan(synthetic_tiny)
    clip, ldm = tmp_path / "clip/fcae-clip-tiny.pt", tmp_path / "ldm/cin256-v2"
    plan |= {"clip_model": "fcae-clip-tiny", "clip_pretrained": str(clip), "pretrained_ldm": str(ldm)}
    plan["stages"]["stage2"]["model"]["init_args"]["clip_tokens"] = 50  # ViT-B-32's, not fcae-clip-tiny's 17
    code, out, err = check(tmp_path, plan, capsys)
    assert code == 2 and out == ""
    found = problems(err)
    assert len(found) == 3, err
    assert found[0].startswith(f"CLIP fcae-clip-tiny / {clip}: CLIP checkpoint {clip} does not exist")
    assert found[1].startswith(f"LDM {ldm}: LDM folder {ldm} does not exist")
    assert "lightning-fcae convert-ldm" in found[1]
    assert found[2] == (
        "stages.stage2: clip_tokens x clip_dim is 50 x 512, the CLIP fcae-clip-tiny gives 17 x 512: "
        "remove stages.stage2.model.init_args.clip_tokens / clip_dim (they follow from the CLIP)"
    )
    assert err.splitlines()[-1] == "preflight: 3 problem(s)"


def test_a_real_run_stops_before_its_first_stage(tmp_path, synthetic_tiny, capsys):
    plan = tiny_plan(synthetic_tiny)
    plan |= {"clip_model": "fcae-clip-tiny", "clip_pretrained": str(tmp_path / "missing.pt")}
    out = tmp_path / "run"
    assert main(["--plan", str(write_plan(tmp_path, plan)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the preflight found 1 problem(s), nothing was run:\n  CLIP fcae-clip-tiny")
    assert not out.exists()
    # the dry run still only writes configs: it needs no weights
    assert main(["--plan", str(write_plan(tmp_path, plan)), "--out", str(out), "--dry-run"]) == 0


def test_an_ldm_at_another_resolution_and_a_model_data_size_clash(tmp_path, synthetic_tiny, capsys):
    plan = tiny_plan(synthetic_tiny)
    plan["stages"]["stage3"]["model"]["init_args"]["image_size"] = 32  # the tiny LDM works at 16 px
    code, _, err = check(tmp_path, plan, capsys)
    assert code == 2
    assert problems(err) == [
        "stages.stage3: model image_size 32 and data image_size 16 differ (Lightning refuses hyper-parameters "
        "that disagree between model and data): set both alike",
        "stages.stage3: images at 32 px, the LDM ldm_config tiny (trained by this run) works at 16 px (its "
        "UNet's latent side x the VQ's downsampling): set stages.stage3 model and data image_size: 16",
    ]


def test_damaged_data_and_altered_stand_ins_are_named(tmp_path, synthetic_tiny, capsys):
    data = tmp_path / "data"
    shutil.copytree(synthetic_tiny, data)
    stats = data / "norm_stats.npz"
    payload = bytearray(stats.read_bytes())
    payload[-1] ^= 0xFF  # one bit pattern changed: the hash differs, the file still opens
    stats.write_bytes(bytes(payload))
    stand_ins = tmp_path / "stand-ins"
    stand_ins.mkdir()
    (stand_ins / "manifest.json").write_text(json.dumps({"files": {"clip/fcae-clip-tiny.safetensors": "0"}}))
    plan = tiny_plan(data) | {"stand_ins": str(stand_ins)}
    code, _, err = check(tmp_path, plan, capsys)
    assert code == 2
    found = problems(err)
    assert found[0].startswith(
        f"dataset {data}: {stats}: sha256 differs from the manifest's norm_stats_sha256"
    )
    assert found[1].startswith(
        f"stand-ins {stand_ins}: stand-in file {stand_ins}/clip/fcae-clip-tiny.safetensors"
    )
    assert len(found) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="names a GPU that a machine without CUDA lacks")
def test_an_accelerator_this_machine_lacks(tmp_path, synthetic_tiny, capsys):
    plan = tiny_plan(synthetic_tiny)
    stages = plan["stages"]  # tiny_plan's stages share one trainer dict: each gets its own
    stages["stage1"]["trainer"] = {
        **stages["stage1"]["trainer"],
        "accelerator": "gpu",
        "precision": "bf16-mixed",
    }
    stages["stage2"]["trainer"] = {
        **stages["stage2"]["trainer"],
        "accelerator": "cpu",
        "precision": "bf16-mixed",
    }
    code, _, err = check(tmp_path, plan, capsys)
    assert code == 2
    assert problems(err) == [
        "stages stage1 (stage1_fcae.yaml): accelerator gpu, devices auto, precision bf16-mixed: "
        "No supported gpu backend found!"
    ]


def test_too_little_disk_for_the_checkpoints(tmp_path, synthetic_tiny, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    findings = preflight(Pipeline(tiny_plan(synthetic_tiny), tmp_path / "run", CONFIGS), ["fcae"], [0, 1])
    assert len(findings.problems) == 1
    assert findings.problems[0].startswith(
        "disk: the run's checkpoints and the CLIP feature cache need about 0."
    )
    assert findings.problems[0].endswith(f"0.0 GB free under {tmp_path}: free space or use another --out")


def test_the_disk_estimate_counts_the_clip_feature_cache_and_a_shared_stage1_once(tmp_path, synthetic_tiny):
    """Stage 2 builds a CLIP feature cache beside the data (2 bytes per float16 feature: every image's
    T x D tokens and two D-wide embeddings); methods that share a stage 1 share its checkpoints."""
    from lightning_fcae.runs.preflight_disk import checkpoint_bytes, clip_cache_bytes
    from lightning_fcae.runs.preflight_weights import ClipGrid

    pipeline = Pipeline(tiny_plan(synthetic_tiny), tmp_path / "run", CONFIGS)
    manifest = Manifest.load(synthetic_tiny)
    samples = sum(split.samples for split in manifest.splits.values())
    grid = ClipGrid(17, 512, "fcae-clip-tiny")
    fits = pipeline.fits(["fcae"], [0])
    assert clip_cache_bytes(pipeline, fits, manifest, grid) == 2 * samples * (17 * 512 + 2 * 512)
    mindvis = pipeline.fits(["mindvis"], [0])
    assert (
        clip_cache_bytes(pipeline, [f for f in mindvis if f.stage.startswith("stage")], manifest, grid) == 0
    )

    def stage1_bytes(methods):
        fits = [f for f in pipeline.fits(methods, [0]) if f.stage == "stage1"]
        configs = {
            (f.stage, f.config_file): pipeline.stage_config(f.stage, f.config_file, f.stage_dir, 0, {})
            for f in fits
        }
        return checkpoint_bytes(Findings(), fits, configs, manifest, None)

    assert stage1_bytes(["fcae", "ours", "fcae_FI"]) == stage1_bytes(["fcae"]) > 0


def test_the_ridge_options_are_refused_on_data_without_a_val_split(tmp_path):
    """Method ours fits its linear path and low-level decoder on train with the penalty chosen on val:
    data without a val split is refused by option and method before stage 1 trains; the paper's recipe
    is not."""
    from .conftest import write_toy_dataset

    data = write_toy_dataset(tmp_path / "no_val", n_val=0)
    findings = preflight(Pipeline(tiny_plan(data), tmp_path / "run", CONFIGS), ["fcae", "ours"], [0])
    refused = [p for p in findings.problems if p.startswith("method ")]
    assert refused == [
        f"method ours: linear_path: ridge and lowlevel: ridge fit(s) on the train split with the penalty "
        f"chosen on val; {data} has no val split: run the paper's recipe (fcae)"
    ]
