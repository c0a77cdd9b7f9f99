"""lightning-fcae pipeline: every stage chained through saved configs, on the tiny synthetic profile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lightning_fcae.cli.pipeline import main
from lightning_fcae.runs.methods import METHODS
from lightning_fcae.runs.pipeline import Pipeline
from lightning_fcae.runs.plan import PlanError, deep_merge
from lightning_fcae.runs.stage_runner import last_csv_values
from lightning_fcae.stages.defaults import STAGE_DEFAULTS

# Every stage for a couple of steps on tiny data: what is tested is the chain, not the learning.
FAST = {"trainer": {"max_epochs": 1, "max_steps": 2, "limit_val_batches": 1, "log_every_n_steps": 1}}
TINY_IMAGES = {"data": {"init_args": {"image_size": 16, "num_workers": 0, "batch_size": 8}}}
LOADER = {"data": {"init_args": {"num_workers": 0, "batch_size": 8}}}


def tiny_plan(data_dir: Path) -> dict:
    ldm = {"model": {"init_args": {"ldm_config": "tiny", "image_size": 16}}}
    return {
        "data_dir": str(data_dir),
        "stages": {
            "clip_pretrain": deep_merge({"model": {"init_args": {"architecture": "fcae-clip-tiny"}}}, LOADER)
            | FAST,
            "ldm_vq": deep_merge(ldm, TINY_IMAGES) | FAST,
            "ldm_unet": deep_merge(
                deep_merge(ldm, {"model": {"init_args": {"clip_tokens": 17}}}), TINY_IMAGES
            )
            | FAST,
            "stage1": deep_merge({"model": {"init_args": {"size": "tiny"}}}, LOADER) | FAST,
            "stage1_image": deep_merge({"model": {"init_args": {"clip_tokens": 17}}}, LOADER) | FAST,
            "stage2": deep_merge({"model": {"init_args": {"clip_tokens": 17, "n_way": 2}}}, LOADER) | FAST,
            "stage3": deep_merge(
                {"model": {"init_args": {"image_size": 16, "sample_steps": 2}}},
                TINY_IMAGES,
            )
            | FAST,
        },
        "reconstruct": {"steps": 2, "batch_size": 48, "n_way": 2},
    }


def write_plan(tmp_path: Path, plan: dict) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def init_args(stage_dir: Path, section: str = "model") -> dict:
    return yaml.safe_load((stage_dir / "run.yaml").read_text())[section]["init_args"]


def test_deep_merge_replaces_lists_and_merges_dicts():
    base = {"model": {"init_args": {"size": "small", "lr": 1.0}}, "trainer": {"callbacks": [1, 2]}}
    merged = deep_merge(base, {"model": {"init_args": {"size": "tiny"}}, "trainer": {"callbacks": [3]}})
    assert merged == {"model": {"init_args": {"size": "tiny", "lr": 1.0}}, "trainer": {"callbacks": [3]}}
    assert base["model"]["init_args"]["size"] == "small"  # the input is not modified


def test_deep_merge_appends_with_a_plus_key_as_jsonargparse_does():
    base = {"trainer": {"callbacks": [1, 2], "logger": {"init_args": {"project": "p"}}}}
    merged = deep_merge(base, {"trainer": {"callbacks+": [3, 4], "logger": {"init_args": {"name": "n"}}}})
    assert merged == {
        "trainer": {"callbacks": [1, 2, 3, 4], "logger": {"init_args": {"project": "p", "name": "n"}}}
    }
    assert deep_merge(merged, {"trainer": {"callbacks+": 5}})["trainer"]["callbacks"] == [1, 2, 3, 4, 5]
    assert deep_merge({}, {"callbacks+": [1]}) == {"callbacks": [1]}
    assert base["trainer"]["callbacks"] == [1, 2]  # the input is not modified


def test_run_yaml_is_the_whole_config_the_cli_runs(tmp_path, synthetic_tiny, capsys):
    """A stage's run.yaml holds the shared callbacks of stage_defaults.yaml once, and LightningCLI, which
    reads stage_defaults.yaml too, resolves it to those very callbacks (none twice, none dropped)."""
    from lightning_fcae.cli import run_lightning_cli

    out = tmp_path / "run"
    assert (
        main(["--plan", str(write_plan(tmp_path, tiny_plan(synthetic_tiny))), "--out", str(out), "--dry-run"])
        == 0
    )
    run_yaml = out / "fcae/seed0/stage1/run.yaml"
    written = yaml.safe_load(run_yaml.read_text())["trainer"]
    shared = yaml.safe_load(STAGE_DEFAULTS.read_text())["trainer"]
    paths = [c["class_path"] for c in written["callbacks"]]
    assert paths[: len(shared["callbacks"])] == [c["class_path"] for c in shared["callbacks"]]
    assert written["logger"][0]["init_args"] == {
        **shared["logger"]["init_args"],
        "name": "run-stage1_fcae-seed0",
        "save_dir": str(out / "stage1/stage1_fcae/seed0"),  # the shared run fcae/seed0/stage1 links to
    }
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_lightning_cli(["fit", f"--config={run_yaml}", "--print_config"])
    resolved = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert [c["class_path"] for c in resolved["callbacks"]] == paths
    assert [c["class_path"] for c in resolved["logger"]] == [c["class_path"] for c in written["logger"]]


def test_dry_run_chains_each_method(tmp_path, synthetic_tiny):
    """Each stage's saved config takes the previous stage's checkpoint, and outputs stay in the run."""
    out = tmp_path / "run"
    plan = write_plan(tmp_path, tiny_plan(synthetic_tiny))
    assert main(["--plan", str(plan), "--out", str(out), "--dry-run", "--methods", *METHODS]) == 0
    stage1 = init_args(out / "fcae/seed0/stage2")["encoder_ckpt"]
    assert stage1 == str(out / "stage1/stage1_fcae/seed0/checkpoints/last.ckpt")  # shared, linked:
    assert (out / "fcae/seed0/stage1").resolve() == (out / "stage1/stage1_fcae/seed0").resolve()
    assert init_args(out / "fcae/seed0/stage3")["encoder_ckpt"] == str(
        out / "fcae/seed0/stage2/checkpoints/last.ckpt"
    )
    # MinD-Vis skips stage 2; vis-dec adds its image-guided phase between stage 1 and stage 3
    assert not (out / "mindvis/seed0/stage2").exists()
    assert init_args(out / "mindvis/seed0/stage3")["encoder_ckpt"] == str(
        out / "stage1/stage1_mae/seed0/checkpoints/last.ckpt"
    )
    assert init_args(out / "visdec/seed0/stage1_image")["init_ckpt"] == str(
        out / "stage1/stage1_dcmae/seed0/checkpoints/last.ckpt"
    )
    assert init_args(out / "visdec/seed0/stage3")["encoder_ckpt"].endswith(
        "visdec/seed0/stage1_image/checkpoints/last.ckpt"
    )
    # ablation flags reach stage 2; the CLIP stand-in and the LDM stand-in are shared by all methods
    assert init_args(out / "fcae_FT/seed0/stage2")["use_image"] is False
    assert init_args(out / "fcae_FI/seed0/stage2")["use_text"] is False
    clip = init_args(out / "fcae/seed0/stage2", "model")
    assert (clip["clip_model"], clip["clip_pretrained"]) == ("fcae-clip-tiny", str(out / "shared/clip.pt"))
    assert init_args(out / "mae_FI/seed0/stage3")["pretrained_ldm"] == str(out / "shared/ldm")
    for config in out.glob("**/run.yaml"):  # nothing is written outside the run folder
        trainer = yaml.safe_load(config.read_text())["trainer"]
        folder = config.parent.resolve()  # a method's stage1 is a link to the shared run
        assert folder.is_relative_to(out.resolve()) and Path(trainer["default_root_dir"]).resolve() == folder
        dirpaths = [
            c["init_args"]["dirpath"] for c in trainer["callbacks"] if "dirpath" in c.get("init_args", {})
        ]
        assert {Path(p).resolve() for p in dirpaths} == {folder / "checkpoints"}  # last.ckpt (and best.ckpt)


def test_an_interrupted_stage_resumes_from_its_last_checkpoint(tmp_path, synthetic_tiny, capsys):
    out = tmp_path / "run"
    plan = write_plan(tmp_path, tiny_plan(synthetic_tiny))
    last = out / "stage1/stage1_fcae/seed0/checkpoints/last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"epoch": 0}, last)  # what an interrupted fit leaves behind (no done-fit.json)
    assert main(["--plan", str(plan), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    stage1 = next(line for line in printed if "stage1/stage1_fcae/seed0:" in line)
    assert stage1.endswith(f"--ckpt_path {last}")
    assert not any("--ckpt_path" in line for line in printed if "stage2: lightning_fcae fit" in line)
    # one cut off mid-write is named with the fix, not a PytorchStreamReader error on every rerun
    last.write_bytes(last.read_bytes()[:-100])
    assert main(["--plan", str(plan), "--out", str(out), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert f"{last}, where stage1/stage1_fcae/seed0 would resume, is damaged" in error
    assert f"delete {last.parent}" in error


def test_a_kill_while_last_ckpt_was_relinked_resumes_from_the_newest_epoch(tmp_path, synthetic_tiny, capsys):
    """``save_last: link`` deletes the old epoch file before relinking last.ckpt: a kill in between leaves
    last.ckpt dangling, and the stage must resume from the new epoch file, not start over."""
    out = tmp_path / "run"
    checkpoints = out / "stage1/stage1_fcae/seed0/checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt"):
        torch.save({"epoch": 0}, checkpoints / name)
    (checkpoints / "last.ckpt").symlink_to("epoch=0-step=2.ckpt")
    (checkpoints / "epoch=0-step=2.ckpt").unlink()  # deleted, not yet relinked
    assert (
        main(["--plan", str(write_plan(tmp_path, tiny_plan(synthetic_tiny))), "--out", str(out), "--dry-run"])
        == 0
    )
    stage1 = next(
        line for line in capsys.readouterr().out.splitlines() if "stage1/stage1_fcae/seed0:" in line
    )
    assert stage1.endswith(f"--ckpt_path {checkpoints / 'epoch=1-step=4.ckpt'}")


def test_a_stage_done_with_another_config_is_refused(tmp_path, synthetic_tiny, capsys):
    """Editing the plan after a stage finished must not skip it silently (stale results) nor re-run it
    alone (the stages after it would be stale): the rerun stops and names what changed."""
    out, plan = tmp_path / "run", tiny_plan(synthetic_tiny)
    argv = ["--plan", str(write_plan(tmp_path, plan)), "--out", str(out), "--dry-run"]
    assert main(argv) == 0
    (out / "stage1/stage1_fcae/seed0/done-fit.json").write_text('{"seconds": 1}')
    (out / "fcae/seed0/recon/done-reconstruct.json").write_text('{"seconds": 1}')
    capsys.readouterr()
    assert main(argv) == 0  # the same plan: finished stages are skipped
    assert "stage1/stage1_fcae/seed0: done already, skipped" in capsys.readouterr().out
    plan["reconstruct"]["steps"] = 3
    write_plan(tmp_path, plan)
    assert main(argv) == 2
    assert "fcae/seed0/recon finished with another config (reconstruct differ" in capsys.readouterr().err
    plan["stages"]["stage1"]["model"]["init_args"]["mask_ratio"] = 0.5
    write_plan(tmp_path, plan)
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "stage1/stage1_fcae/seed0 finished with another config (model.init_args.mask_ratio differ" in error
    assert "use a new --out" in error


def test_bad_plans_are_named_errors(tmp_path, synthetic_tiny, capsys):
    with pytest.raises(PlanError, match="unknown stages"):
        Pipeline({"data_dir": str(synthetic_tiny), "stages": {"stage4": {}}}, tmp_path, Path("configs"))
    with pytest.raises(PlanError, match="unknown methods"):
        Pipeline({"data_dir": str(synthetic_tiny)}, tmp_path, Path("configs"))(["mindeye"], [0])
    with pytest.raises(PlanError, match="stages.stage1 must be a mapping"):
        Pipeline({"data_dir": str(synthetic_tiny), "stages": {"stage1": [1]}}, tmp_path, Path("configs"))
    with pytest.raises(PlanError, match="without clip_model"):
        Pipeline({"data_dir": str(synthetic_tiny), "clip_pretrained": "x.pt"}, tmp_path, Path("configs"))
    with pytest.raises(PlanError, match=r"unknown keys \['stagez'\]"):  # a typo must not drop the overrides
        Pipeline({"data_dir": str(synthetic_tiny), "stagez": {}}, tmp_path, Path("configs"))
    with pytest.raises(PlanError, match=r"unknown reconstruct options \['stepz'\]"):  # not after training
        Pipeline({"data_dir": str(synthetic_tiny), "reconstruct": {"stepz": 3}}, tmp_path, Path("configs"))
    with pytest.raises(SystemExit):
        main(["--plan", "x.yaml", "--out", str(tmp_path), "--seeds", "-1"])
    assert "seeds must be in [0, 2**32)" in capsys.readouterr().err
    plan = write_plan(tmp_path, {"data_dir": str(tmp_path / "nowhere")})
    assert main(["--plan", str(plan), "--out", str(tmp_path / "run")]) == 2
    assert "no dataset at" in capsys.readouterr().err
    plan.write_text("data_dir: [unclosed\n")
    assert main(["--plan", str(plan), "--out", str(tmp_path / "run")]) == 2
    assert f"{plan} is not valid YAML" in capsys.readouterr().err
    plan.write_text("- a list\n")
    assert main(["--plan", str(plan), "--out", str(tmp_path / "run")]) == 2
    assert "must hold a mapping" in capsys.readouterr().err


def test_last_csv_values_reads_sparse_rows(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,test/top1_2way,test/loss\n0,0,0.5,\n0,0,,1.25\n")
    assert last_csv_values(path) == {"epoch": 0.0, "step": 0.0, "test/top1_2way": 0.5, "test/loss": 1.25}


def test_full_chain_runs_and_resumes(tmp_path, synthetic_tiny, monkeypatch, capsys):
    """All of fCAE's stages for two steps each: stand-ins, stage 1 -> 2 -> 3, reconstruction, report."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the stages run as subprocesses
    out = tmp_path / "run"
    plan = write_plan(tmp_path, tiny_plan(synthetic_tiny))
    assert main(["--plan", str(plan), "--out", str(out)]) == 0
    summary = json.loads((out / "fcae/seed0/summary.json").read_text())
    assert summary["params"]["fmri"] > 0 and summary["params"]["total"] > summary["params"]["fmri"]
    assert 0 <= summary["identification"]["top1_2way"] <= 1
    assert summary["recon"]["meta"]["images"] == 96  # tiny: 48 test images x 2 subjects
    assert set(summary["seconds"]) == {
        "stage1/fit",
        "stage2/fit",
        "stage2/test",
        "stage3/fit",
        "recon/reconstruct",
    }
    assert (out / "report.html").is_file() and (out / "table2.md").is_file()
    # the ridge yardstick is scored like the methods and sits in both tables as a labelled row
    ridge = json.loads((out / "ridge/seed0/summary.json").read_text())
    assert set(ridge["recon"]["raw"]["mean"]) >= {"pixcorr", "ssim", "clip_2way"}
    assert 0 <= ridge["identification"]["top1_2way"] <= 1
    assert "Ridge yardstick" in (out / "table2.md").read_text()
    # a second run finds every stage done and only rewrites the summary and report
    capsys.readouterr()
    assert main(["--plan", str(plan), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("done already, skipped") == 9  # 8 stages and the ridge


def test_a_lost_export_is_written_again_before_a_stage_counts_as_done(tmp_path, synthetic_tiny, monkeypatch):
    """A kill between a stand-in's last checkpoint and its export left a stage that resumed at its end
    as a no-op: the export happens at fit end (also when resumed there) and is checked."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plan = tiny_plan(synthetic_tiny)
    plan["stages"]["classifier"] = deep_merge(TINY_IMAGES, FAST)
    pipeline = Pipeline(plan, tmp_path / "run", Path(__file__).resolve().parents[1] / "configs")
    weights = pipeline.classifier() / "diffusion_pytorch_model.safetensors"
    trained = weights.read_bytes()
    weights.unlink()  # as if killed after the checkpoint, before the export
    pipeline.classifier()
    assert weights.read_bytes() == trained


def test_a_second_pipeline_on_the_same_folder_is_refused_in_one_line(tmp_path, synthetic_tiny, capsys):
    from lightning_fcae.runs.run_lock import LOCK_NAME, run_lock

    out = tmp_path / "run"
    plan = write_plan(tmp_path, tiny_plan(synthetic_tiny))
    with run_lock(out):  # a live holder (this process)
        assert main(["--plan", str(plan), "--out", str(out), "--dry-run"]) == 2
    assert capsys.readouterr().err == (
        f"error: {out} is in use by another pipeline (pid {os.getpid()}); wait for it to end or use another --out\n"
    )
    assert not (out / "fcae").exists()
    (out / LOCK_NAME).write_text("999999999\n")  # left by a killed run: the kernel freed its lock
    assert main(["--plan", str(plan), "--out", str(out), "--dry-run"]) == 0


def test_a_run_folder_refuses_results_from_another_dataset(tmp_path, capsys):
    """Data regenerated at the same path must not meet the finished stages made from the old data."""
    from .conftest import write_toy_dataset

    data = write_toy_dataset(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["--plan", str(write_plan(tmp_path, tiny_plan(data))), "--out", str(out), "--dry-run"]
    assert main(argv) == 0
    assert main(argv) == 0  # the same data: resumes
    shutil.rmtree(data)
    write_toy_dataset(data, seed=1)  # other fMRI under the same keys and path
    capsys.readouterr()
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"{out} holds results made from another dataset" in error and "use a new --out" in error


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" not in status.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_a_killed_pipeline_takes_its_training_child_with_it(tmp_path, synthetic_tiny):
    plan = tiny_plan(synthetic_tiny)
    plan["stages"]["stage1"] = {"trainer": {"max_epochs": 1000, "max_steps": -1}}  # would run for minutes
    path = write_plan(tmp_path, plan)
    command = [
        sys.executable,
        "-m",
        "lightning_fcae",
        "pipeline",
        "--plan",
        str(path),
        "--out",
        str(tmp_path / "run"),
    ]
    pipeline = subprocess.Popen(
        [*command, "--methods", "mindvis"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (children := _children(pipeline.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert children, "the pipeline started no stage"
    pipeline.kill()  # SIGKILL: no handler of the pipeline runs
    pipeline.wait()
    deadline = time.monotonic() + 60
    while any(map(_running, children)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(_running, children)), "a stage outlived its pipeline"


def test_progress_is_by_work_done_with_the_time_left(tmp_path, synthetic_tiny, capsys):
    out, plan = tmp_path / "run", write_plan(tmp_path, tiny_plan(synthetic_tiny))
    assert main(["--plan", str(plan), "--out", str(out), "--methods", "fcae", "mindvis", "--dry-run"]) == 0
    labels = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[") and "·" in line]
    # every task the run goes through was planned, in the order it runs
    indices = [line[1:].split(" ")[0] for line in labels]
    assert indices == [f"{k}/{len(labels)}" for k in range(1, len(labels) + 1)], labels
    assert "0% done · 0:00 elapsed · time left: known after the first stage that runs]" in labels[0]
    pipeline = Pipeline(yaml.safe_load(plan.read_text()), out, Path("configs"))
    work = pipeline.planned_work(["fcae"], [0])
    # FAST: 2 steps of batch 8 per fit; the test split (in samples) for the stage-2 test, x 2 DDIM steps
    # for the reconstruction
    test = json.loads((synthetic_tiny / "manifest.json").read_text())["splits"]["test"]["samples"]
    assert work["stage1/stage1_fcae/seed0:fit"] == 16 and work["fcae/seed0/stage2:test"] == test
    assert work["fcae/seed0/recon:reconstruct"] == 2 * test


def test_the_runner_runs_the_tasks_the_preflight_and_progress_were_given(tmp_path, synthetic_tiny, capsys):
    """What a run does (its console lines, in order) is :meth:`Pipeline.tasks`: the fits the preflight
    checks are its fits and the progress counts each of its tasks once, for every method and 2 seeds."""
    out, plan = tmp_path / "run", write_plan(tmp_path, tiny_plan(synthetic_tiny))
    methods, seeds = list(METHODS), [0, 1]
    argv = ["--plan", str(plan), "--out", str(out), "--dry-run", "--methods", *methods, "--seeds", "0", "1"]
    assert main(argv) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[") and "·" in line]
    words = {"lightning_fcae fit ": "fit", "lightning_fcae test ": "test"}
    words |= {"lightning_fcae reconstruct ": "reconstruct", ": ridge yardstick": "ridge"}
    ran = []  # (folder, command) of each task the run went through
    for line in printed:
        folder = line.split("] ", 1)[1].split(": ", 1)[0]
        (word,) = [word for key, word in words.items() if key in line]
        if "/strength/" in folder:  # img2img's choice: the val split reconstructed at each strength
            folder, word = folder.rsplit("/", 1)[0], "strength"
            if ran[-1] == (folder, word):
                continue
        ran.append((folder, word))
    pipeline = Pipeline(yaml.safe_load(plan.read_text()), out, Path("configs"))
    tasks = pipeline.tasks(methods, seeds)
    assert ran == [(str(task.stage_dir.relative_to(out)), task.command) for task in tasks]
    fits = [(folder, "fit") for folder, word in ran if word == "fit"]
    assert fits == [(str(fit.stage_dir.relative_to(out)), "fit") for fit in pipeline.fits(methods, seeds)]
    # each task counted once: a stage 1 that methods share is one task
    planned = list(dict.fromkeys(f"{folder}:{word}" for folder, word in ran))
    assert list(pipeline.planned_work(methods, seeds)) == planned
    # the stand-ins and the ridge; per seed 3 stage-1 runs (fCAE, MAE, DC-MAE) shared by the 8 methods,
    # then 5 aligned methods x 4 (stage 2 fit + test, stage 3, recon) and ours 1 more (its strength on
    # val), 2 without stage 2 x 2, vis-dec 3; every method passes its stage 1 (5 of the 8 find it done)
    assert len(planned) == 3 + 1 + 2 * (3 + 5 * 4 + 1 + 2 * 2 + 3)
    assert len(ran) == len(planned) + 2 * 5


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path, synthetic_tiny, capsys, monkeypatch):
    out, plan = tmp_path / "run", write_plan(tmp_path, tiny_plan(synthetic_tiny))

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess, "run", interrupt)
    argv = ["--plan", str(plan), "--out", str(out)]
    assert main(argv) == 130
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("interrupted during shared/clip_pretrain: the stages before it are kept")
    assert f"rerun `lightning-fcae pipeline --plan {plan} --out {out}` to go on" in error


def test_a_stage_that_finished_without_its_last_checkpoint_is_named(tmp_path, synthetic_tiny, monkeypatch):
    """A config whose checkpoint callback keeps no last.ckpt (a user's, or a broken default) fails at that
    stage with the fix, not in the next stage as a missing encoder_ckpt."""
    pipeline = Pipeline(
        tiny_plan(synthetic_tiny), tmp_path / "run", Path(__file__).resolve().parents[1] / "configs"
    )
    monkeypatch.setattr(Pipeline, "run", lambda self, *args, **kwargs: None)  # "finished", wrote nothing
    with pytest.raises(PlanError, match="finished without writing .*last.ckpt.*StageCheckpoint"):
        pipeline.fit("stage1", "stage1_fcae.yaml", tmp_path / "run" / "stage1", 0, {})
