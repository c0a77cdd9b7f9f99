"""Stage-3 evaluation: test split -> PNGs + grid + metrics, resuming, the CLI, the training callback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_fcae.cli import main as cli_main
from lightning_fcae.data.datamodule import NSDDataModule
from lightning_fcae.data.writer import DatasetWriter
from lightning_fcae.inference.reconstruct import ReconstructionError, reconstruct_split
from lightning_fcae.inference.reconstruction_pipeline import FMRIReconstructionPipeline
from lightning_fcae.metrics.callbacks import ReconstructionMetrics
from lightning_fcae.stages.diffusion import LDMFinetune
from tests.conftest import VOXELS
from tests.ddp import run_ranks

V = 80  # padded voxel count of VOXELS


def _textured_dataset(root, fmri_seed: int = 0):
    """The toy layout of conftest (2 subjects; test: 8 shared images, 3 repeats) with textured images:
    pixel correlation is undefined on the toy set's flat colours."""
    with DatasetWriter(root, "textured", VOXELS, 16, {"generator": "test"}, samples_per_shard=8) as writer:
        rng = np.random.default_rng(fmri_seed)
        for subject, n in VOXELS.items():
            for split, count, repeats, first_id in (
                ("train", 16, 1, 0),
                ("val", 8, 1, 1000),
                ("test", 8, 3, 2000),
            ):
                for image_id in range(first_id, first_id + count):
                    image = np.random.default_rng(image_id).integers(0, 256, (16, 16, 3), dtype=np.uint8)
                    fmri = rng.normal(size=(repeats, n))
                    writer.write(split, subject, image_id, fmri, image, [f"image {image_id}"])
    return root


def _trainer(root, **kwargs) -> L.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return L.Trainer(
        default_root_dir=root, accelerator="cpu", enable_model_summary=False, **{**defaults, **kwargs}
    )


def _datamodule(data) -> NSDDataModule:
    return NSDDataModule(str(data), batch_size=8, num_workers=0, sparsity=0.0)


def train_stage3(root: Path, steps: int) -> tuple[Path, Path]:
    """A textured dataset under ``root`` and a tiny LDMFinetune checkpoint trained ``steps`` steps on it."""
    data = _textured_dataset(root / "data")
    L.seed_everything(0)
    trainer = _trainer(root, max_steps=steps, limit_val_batches=0)
    trainer.fit(LDMFinetune(V, clip_tokens=5, clip_dim=16, lr=1e-3, sample_steps=2), _datamodule(data))
    trainer.save_checkpoint(root / "ldm.ckpt")
    return data, root / "ldm.ckpt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_stage3(tmp_path_factory.mktemp("reconstruct"), steps=3)


def test_reconstruct_writes_scores_and_resumes_per_sample(trained, tmp_path, monkeypatch):
    data, ckpt = trained
    out = tmp_path / "out"

    def run():
        torch.manual_seed(0)  # the random-weight test CLIP is initialised from the global RNG
        return reconstruct_split(
            ckpt, data, out=out, steps=3, clip_model="fcae-clip-tiny", n_way=4, progress=False
        )

    rows = []  # fMRI rows per pipeline call
    original = FMRIReconstructionPipeline.__call__

    def counting(self, fmri, *args, **kwargs):
        rows.append(len(fmri))
        return original(self, fmri, *args, **kwargs)

    monkeypatch.setattr(FMRIReconstructionPipeline, "__call__", counting)
    metrics = run()
    assert rows == [16]  # the one data batch (batch_size 16) sampled in one call
    monkeypatch.undo()
    images = sorted((out / "images").glob("*.png"))
    assert len(images) == 16 and all(p.stem.endswith("_0") for p in images)
    truth = sorted((out / "truth").glob("*.png"))
    assert [p.stem for p in truth] == [p.stem.removesuffix("_0") for p in images]
    assert truth[0].stem == "subj01_nsd002000"
    assert (out / "grid.png").is_file()
    grid = json.loads((out / "grid.json").read_text())  # the report's labels: 8 of each subject, in order
    assert grid["samples"] == 1 and [r["subject"] for r in grid["rows"]] == ["subj01"] * 8 + ["subj02"] * 8
    assert grid["rows"][0]["key"] == "subj01_nsd002000" and all(r["caption"] for r in grid["rows"])
    assert json.loads((out / "metrics.json").read_text()) == metrics

    raw, pairwise = metrics["raw"]["mean"], metrics["pairwise"]["mean"]
    assert set(raw) == {"mse", "pixcorr", "ssim", "clip_score", "clip_2way", "clip_4way"}
    assert 0 <= raw["mse"] <= 1 and -1 <= raw["pixcorr"] <= 1 and raw["ssim"] <= 1
    assert all(0 <= raw[k] <= 1 for k in ("clip_2way", "clip_4way")) and -1 <= raw["clip_score"] <= 1
    assert set(pairwise) == {"pairwise_mse", "pairwise_pcc", "pairwise_ssim"}
    assert all(0 <= v <= 1 for v in pairwise.values())
    assert set(metrics["pairwise"]["per_subject"]) == {"subj01", "subj02"}
    per_subject = metrics["raw"]["per_subject"]
    assert raw["ssim"] == pytest.approx((per_subject["subj01"]["ssim"] + per_subject["subj02"]["ssim"]) / 2)
    perceptual = metrics["perceptual"]
    assert {"lpips_alex", "alexnet2", "swav"} <= set(perceptual["mean"]) | set(perceptual.get("skipped", {}))
    assert metrics["meta"]["images"] == 16 and metrics["meta"]["subjects"] == {"subj01": 8, "subj02": 8}

    # a rerun samples nothing and reads the same pixels back
    mtimes = {p: p.stat().st_mtime_ns for p in images}

    def no_sampling(*args, **kwargs):
        raise AssertionError("a finished sample was sampled again")

    monkeypatch.setattr(FMRIReconstructionPipeline, "__call__", no_sampling)
    assert run() == metrics

    # a lost PNG is sampled again, alone, with its own seed: the same image as in the batch of 16
    monkeypatch.undo()
    monkeypatch.setattr(FMRIReconstructionPipeline, "__call__", counting)
    rows.clear()
    lost = images[5]
    before = lost.read_bytes()
    lost.unlink()
    assert run() == metrics
    assert rows == [1] and lost.read_bytes() == before
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in images if p != lost)

    with pytest.raises(ReconstructionError, match="steps"):  # other settings would mix two runs' images
        reconstruct_split(ckpt, data, out=out, steps=4, progress=False)
    # a checkpoint retrained into the same path is another model, whatever its name
    retrained = tmp_path / "retrained" / ckpt.name
    retrained.parent.mkdir()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["state_dict"] = {
        k: v + 1e-3 if v.is_floating_point() else v for k, v in state["state_dict"].items()
    }
    torch.save(state, retrained)
    settings = json.loads((out / "settings.json").read_text())
    (out / "settings.json").write_text(json.dumps(settings | {"ckpt": str(retrained.resolve())}))
    with pytest.raises(ReconstructionError, match="ckpt_sha256"):
        reconstruct_split(retrained, data, out=out, steps=3, progress=False)
    # other fMRI under the same keys is another evaluation: its PNGs are not these
    other = _textured_dataset(tmp_path / "other-data", fmri_seed=1)
    with pytest.raises(ReconstructionError, match="data_sha256"):
        reconstruct_split(ckpt, other, out=out, steps=3, progress=False)


def test_sampling_settings_default_to_the_checkpoints(trained, tmp_path):
    """Without --steps / --guidance, reconstruct samples as the model was configured to (its
    ``sample_steps`` and ``guidance_scale``), not with a default of its own."""
    data, ckpt = trained
    reconstruct_split(ckpt, data, out=tmp_path / "out", n_way=2, progress=False)
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert (settings["steps"], settings["guidance"]) == (2, 3.0)


def test_cli_reconstruct_and_clear_errors(trained, tmp_path, capsys):
    data, ckpt = trained
    args = ["reconstruct", "--data", str(data), "--steps", "2", "--no-progress"]
    with pytest.raises(SystemExit) as exit_:
        cli_main([*args, "--ckpt", str(ckpt), "--out", str(tmp_path / "out"), "--samples", "2"])
    assert exit_.value.code == 0
    assert "pairwise_pcc" in capsys.readouterr().out
    assert len(list((tmp_path / "out" / "images").glob("*_1.png"))) == 16
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["meta"]["samples"] == 2 and "clip_score" not in metrics["raw"]["mean"]

    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("not a checkpoint")
    stage1_like = tmp_path / "stage1.ckpt"
    torch.save(
        {"state_dict": {"model.x": torch.zeros(1)}, "models": {"model": {"class": "MAE"}}}, stage1_like
    )
    unrecorded = tmp_path / "unrecorded.ckpt"  # a development version's: no models record
    torch.save({"state_dict": {"aligner.x": torch.zeros(1), "conditioner.x": torch.zeros(1)}}, unrecorded)
    for path, message in (
        (not_a_checkpoint, "not a PyTorch checkpoint"),
        (stage1_like, "not an LDMFinetune"),
        (unrecorded, "retrain it with the current version"),
    ):
        with pytest.raises(SystemExit) as exit_:
            cli_main([*args, "--ckpt", str(path), "--out", str(tmp_path / "bad")])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert str(path) in err and message in err


class ImageLogger(CSVLogger):
    """A logger with W&B's ``log_image`` signature that keeps what it is given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.images = []

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images, step))


def test_reconstruction_metrics_callback(trained, tmp_path, monkeypatch):
    data, _ = trained
    calls = []
    original = LDMFinetune.sample

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LDMFinetune, "sample", counting)
    torch.manual_seed(0)
    callback = ReconstructionMetrics(num_samples=4, steps=2, every_n_epochs=2)
    trainer = _trainer(
        tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=1, callbacks=[callback]
    )
    trainer.fit(LDMFinetune(V, clip_tokens=5, clip_dim=16), _datamodule(data))
    assert len(calls) == 1  # not in the sanity check, not after epoch 0
    for name in ("mse", "pixcorr", "ssim", "pairwise_pcc"):
        assert torch.isfinite(trainer.callback_metrics[f"val_recon/{name}"]), name
    assert [p.name for p in tmp_path.glob("val_recon_*.png")] == ["val_recon_epoch1.png"]

    logger = ImageLogger(tmp_path / "logs")
    trainer = _trainer(
        tmp_path / "run2", logger=logger, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
        callbacks=[ReconstructionMetrics(num_samples=4, steps=2)], num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(LDMFinetune(V, clip_tokens=5, clip_dim=16), _datamodule(data))
    ((key, images, step),) = logger.images
    assert key == "val_recon/grid" and images[0].shape[0] == 3 and step == trainer.global_step
    assert not list((tmp_path / "run2").rglob("val_recon_*.png"))


def test_reconstruction_metrics_under_two_process_ddp(trained, tmp_path):
    """Only rank 0 samples and scores: any collective there (a torchmetrics sync in compute, a broadcast)
    would wait forever for the other rank, which has gone on training."""
    data, _ = trained
    command = [sys.executable, __file__, str(data), str(tmp_path)]
    run_ranks(command, tmp_path, "DDP fit with ReconstructionMetrics")
    assert json.loads((tmp_path / "rank0.json").read_text()) == ["mse", "pairwise_pcc", "pixcorr", "ssim"]
    assert [p.name for p in tmp_path.glob("val_recon_*.png")] == ["val_recon_epoch0.png"]


def _ddp_fit(data: str, root: str) -> None:
    """The DDP test's run; Lightning starts rank 1 as this same command."""
    torch.set_num_threads(1)
    callback = ReconstructionMetrics(num_samples=4, steps=2)
    trainer = _trainer(
        root, devices=2, strategy="ddp", use_distributed_sampler=False, max_epochs=1,
        limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0, callbacks=[callback],
    )  # fmt: skip
    trainer.fit(LDMFinetune(V, clip_tokens=5, clip_dim=16), _datamodule(data))
    if trainer.is_global_zero:
        names = sorted(
            k.removeprefix("val_recon/") for k in trainer.callback_metrics if k.startswith("val_recon/")
        )
        (Path(root) / "rank0.json").write_text(json.dumps(names))


if __name__ == "__main__":
    _ddp_fit(*sys.argv[1:3])
