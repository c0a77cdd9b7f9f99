"""Stage 1 as a user runs it: the CLI, learning on the synthetic benchmark, chaining, DDP."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from lightning_fcae.cli import run_lightning_cli
from lightning_fcae.data.datamodule import NSDDataModule
from lightning_fcae.metrics.probe import LinearProbe, pool_latents, probe_features, ridge_probe_accuracy
from lightning_fcae.models import FCAE, MAE, model_size
from lightning_fcae.models.factory import load_model
from lightning_fcae.stages import FCAEPretrain, MAEPretrain
from lightning_fcae.stages.optim import adamw, warmup_cosine
from lightning_fcae.stages.seeding import reseed_for_rank_and_step
from tests.ddp import REPO, run_ranks


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(default_root_dir=tmp_path, **{**defaults, **kwargs})


@pytest.mark.parametrize("config", ["stage1_fcae.yaml", "stage1_mae.yaml"])
def test_cli_fast_dev_run(config, toy_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_lightning_cli(
        [
            "fit",
            f"--config={REPO / 'configs' / config}",
            f"--config={REPO / 'configs' / 'profiles' / 'tiny.yaml'}",
            f"--data.data_dir={toy_dataset}",
            "--trainer.fast_dev_run=true",
        ]
    )
    assert cli.trainer.state.finished
    assert cli.model.hparams.num_voxels == 80  # linked from the DataModule
    assert math.isfinite(cli.trainer.callback_metrics["train/loss"].item())
    # a smoke test skips the linear probe (a pass over train and val whose figure would be discarded)
    assert any(isinstance(c, LinearProbe) for c in cli.trainer.callbacks)
    assert (
        "val/loss" in cli.trainer.callback_metrics and "probe/shape_acc" not in cli.trainer.callback_metrics
    )


def test_a_rerun_replaces_the_checkpoint_the_next_stage_reads(toy_dataset, tmp_path, monkeypatch):
    """configs/stage2_align.yaml reads checkpoints/stage1_fcae/last.ckpt: by Lightning's default a rerun
    would save last-v1.ckpt beside it and leave stage 2 silently on the first run's weights."""
    monkeypatch.chdir(tmp_path)
    runs = []
    for seed in (1, 2):
        cli = run_lightning_cli(
            [
                "fit", f"--config={REPO / 'configs' / 'stage1_fcae.yaml'}",
                f"--config={REPO / 'configs' / 'profiles' / 'tiny.yaml'}", f"--data.data_dir={toy_dataset}",
                f"--seed_everything={seed}", "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
            ]
        )  # fmt: skip
        runs.append(cli.model.state_dict())
    folder = tmp_path / "checkpoints" / "stage1_fcae"
    assert not list(folder.glob("last-v*.ckpt"))
    # the run's config is saved beside its own logs, not in a folder every stage shares
    assert (tmp_path / "results" / "stage1_fcae" / "config.yaml").is_file()
    assert not (tmp_path / "results" / "config.yaml").exists()
    saved = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    name = "model.encoder.patch_embed.proj.weight"
    assert torch.equal(saved[name], runs[1][name]) and not torch.equal(saved[name], runs[0][name])


class Preempted(L.Callback):
    """Ends a run at the start of its third epoch the way a crash or a preemption does: no
    ``on_train_end``, so only what was saved along the way survives."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            raise SystemExit("preempted")


def test_an_interrupted_fit_resumes_from_last_ckpt(toy_dataset, tmp_path, monkeypatch):
    """The stage configs' checkpointing leaves a last.ckpt behind a run that never finished (Lightning
    2.6 writes ``last`` only beside a saved checkpoint, so ``save_top_k: 0`` would leave nothing), and
    ``--ckpt_path`` to it continues at the step where the run stopped."""
    monkeypatch.chdir(tmp_path)
    args = [
        "fit", f"--config={REPO / 'configs' / 'stage1_fcae.yaml'}",
        f"--config={REPO / 'configs' / 'profiles' / 'tiny.yaml'}", f"--data.data_dir={toy_dataset}",
        "--data.batch_size=16", "--trainer.max_epochs=3",
    ]  # fmt: skip
    with pytest.raises(SystemExit, match="preempted"):
        run_lightning_cli([*args, "--trainer.callbacks+=tests.test_stage1.Preempted"])
    last = tmp_path / "checkpoints" / "stage1_fcae" / "last.ckpt"
    steps_per_epoch = 96 // 16  # two subjects x 48 training samples
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2 * steps_per_epoch
    cli = run_lightning_cli([*args, f"--ckpt_path={last}"])
    assert cli.trainer.global_step == 3 * steps_per_epoch


def test_validation_loss_is_repeatable(toy_dataset, tmp_path):
    """Masks in validation are seeded per batch: validating the same weights twice gives the same
    val/loss (fit's figure can be checked later with `lightning validate`)."""
    dm = NSDDataModule(str(toy_dataset), batch_size=8, num_workers=0, with_images=False)
    module = FCAEPretrain(dm.num_voxels, size="tiny")
    first, second = (_trainer(tmp_path).validate(module, dm, verbose=False)[0]["val/loss"] for _ in range(2))
    assert first == second


def _probe(module, dm, shuffle_labels=False) -> float:
    train_x, train_y = probe_features(module, dm, "train", "shape", pool="tokens")
    if shuffle_labels:
        train_y = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))]
    # measured on test (96 samples) rather than val (38): nothing is selected with it here
    test = probe_features(module, dm, "test", "shape", pool="tokens")
    return ridge_probe_accuracy(train_x, train_y, *test, alpha=0.1)


def _val_loss(module, dm, tmp_path) -> float:
    torch.manual_seed(123)  # the same masks before and after training
    return _trainer(tmp_path).validate(module, dm, verbose=False)[0]["val/loss"]


def test_fcae_learns_on_synthetic_benchmark(synthetic_tiny, tmp_path):
    L.seed_everything(0)
    dm = NSDDataModule(str(synthetic_tiny), batch_size=32, num_workers=0, with_images=False)
    module = FCAEPretrain(dm.num_voxels, size="tiny", lr=3e-3)
    loss_before = _val_loss(module, dm, tmp_path)

    probe = LinearProbe("shape", every_n_epochs=10)
    trainer = _trainer(tmp_path, max_steps=300, callbacks=[probe], check_val_every_n_epoch=10)
    trainer.fit(module, dm)

    assert _val_loss(module, dm, tmp_path) < 0.8 * loss_before
    chance = 1 / 8  # 8 shapes in the tiny test set's labels
    # On tiny (173 training images per subject) pretraining does not yet beat random-init features
    # (random projections of informative voxels are informative too); what must hold is that the
    # probe finds real signal in the latents: well above chance and above a shuffled-label probe.
    accuracy, control = _probe(module, dm), _probe(module, dm, shuffle_labels=True)
    assert accuracy > chance + 0.08 and accuracy > control + 0.08, (accuracy, control)
    assert 0.0 <= trainer.callback_metrics["probe/shape_acc"] <= 1.0  # outside fast_dev_run, it probes


def test_probe_features_stop_at_their_cap(toy_dataset):
    dm = NSDDataModule(str(toy_dataset), batch_size=4, num_workers=0, with_images=False)
    module = FCAEPretrain(dm.num_voxels, size="tiny")
    features, labels = probe_features(module, dm, "train", "shape", max_samples=6, progress=True)
    assert features.shape[0] == labels.shape[0] == 6


def test_probe_of_a_label_the_dataset_lacks_warns_and_training_goes_on(toy_dataset, tmp_path):
    """The stage-1 configs probe the synthetic `shape` label; on NSD (COCO categories, or none) the
    probe must step aside with a warning instead of ending the first epoch with a KeyError."""
    dm = NSDDataModule(str(toy_dataset), batch_size=16, num_workers=0, with_images=False)
    probe = LinearProbe("category")
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[probe])
    with pytest.warns(UserWarning, match="LinearProbe off: no train sample has the label 'category'"):
        trainer.fit(FCAEPretrain(dm.num_voxels, size="tiny"), dm)
    assert trainer.current_epoch == 2 and probe.unavailable
    assert "probe/category_acc" not in trainer.callback_metrics


def test_ridge_probe_on_known_features():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    centres = torch.randn(3, 5, generator=generator) * 5
    features = centres[labels] + 0.1 * torch.randn(60, 5, generator=generator)
    assert ridge_probe_accuracy(features[:30], labels[:30], features[30:], labels[30:]) == 1.0
    wide = features.repeat(1, 50)  # f = 250 > n = 30: solved in the dual form
    assert ridge_probe_accuracy(wide[:30], labels[:30], wide[30:], labels[30:]) == 1.0
    latents = torch.arange(2 * 8 * 3, dtype=torch.float).reshape(2, 8, 3)
    assert torch.equal(pool_latents(latents, "groups", 4)[0, :3], latents[0, :2].mean(0))
    assert pool_latents(latents[:, :7], "groups", 4).shape == (2, 12)  # uneven stretches still cover all
    assert pool_latents(latents, "tokens").shape == (2, 24) and pool_latents(latents, "mean").shape == (2, 3)


def test_stage1_checkpoint_chains_to_the_next_stage(toy_dataset, tmp_path):
    dm = NSDDataModule(str(toy_dataset), batch_size=8, num_workers=0, with_images=False)
    for stage, kind in ((FCAEPretrain, FCAE), (MAEPretrain, MAE)):
        module = stage(dm.num_voxels, size="tiny")
        trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
        trainer.fit(module, dm)
        path = tmp_path / f"{stage.__name__}.ckpt"
        trainer.save_checkpoint(path)
        model = load_model(path, "model")  # strict, no LightningModule
        assert isinstance(model, kind)
        for name, tensor in module.model.state_dict().items():
            assert torch.equal(tensor, model.state_dict()[name]), name


def test_warmup_cosine_schedule_hits_its_anchors():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps=110, warmup_steps=10, lr=1.0, min_lr=0.1)
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_adamw_does_not_decay_norms_biases_or_tokens():
    model = FCAE(64, *model_size("tiny"))
    optimizer = adamw(model, lr=1e-3, weight_decay=0.05)
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    for name, param in model.named_parameters():
        expect = param.ndim > 1 and not name.endswith("token")
        assert (id(param) in decayed) == expect, name


def test_two_process_ddp_matches_one_process(toy_dataset, tmp_path):
    script = REPO / "tests" / "scripts" / "ddp_equivalence.py"
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"{devices}.json"
        command = [sys.executable, str(script), "--devices", str(devices), "--out", str(out)]
        run_ranks(
            [*command, "--data", str(toy_dataset)], tmp_path, f"stage-1 fit on {devices} process(es)", 300
        )
        results[devices] = json.loads(out.read_text())
    one, two = results[1], results[2]
    # the losses after steps 1 and 2 depend on the synchronised updates: rank-local gradients would
    # move them by far more than this tolerance
    np.testing.assert_allclose(one["losses"], two["losses"], rtol=1e-5)
    # Adam's update is ~lr * sign(g): for weights whose gradient is ~0, float noise in the all-reduce
    # can flip it, so per-tensor sums agree to a few lr (1.7e-3) rather than to float precision
    np.testing.assert_allclose(one["weights"], two["weights"], rtol=1e-4, atol=1e-2)
    assert two["batches_per_rank"] == [two["expected_batches"]] * 2


def test_training_draws_differ_by_rank_and_step_but_repeat_per_run(monkeypatch):
    """Every DDP rank runs seed_everything(seed): without reseeding per rank they would all draw the
    same masks, noise and timesteps; a resumed run (later step) must not replay step 0's draws."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")

    def draws(rank: int, step: int) -> torch.Tensor:
        reseed_for_rank_and_step(SimpleNamespace(global_rank=rank, global_step=step))
        return torch.rand(4)

    first = draws(0, 0)
    assert not torch.equal(first, draws(1, 0)) and not torch.equal(first, draws(0, 500))
    assert torch.equal(first, draws(0, 0))
