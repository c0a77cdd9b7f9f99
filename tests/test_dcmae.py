"""The vis-dec baseline (DC-MAE): loss terms and their weights, InfoNCE, checkpoints into stages 2-3,
the image-guided phase, the CLI configs and DDP negatives."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import lightning_fcae.models.mae as mae_module
from lightning_fcae.cli import run_lightning_cli
from lightning_fcae.data.datamodule import NSDDataModule
from lightning_fcae.models import DCMAE, MAE, model_size
from lightning_fcae.models.dcmae import info_nce
from lightning_fcae.models.factory import checkpoint_models, load_fmri_encoder, load_model, read_checkpoint
from lightning_fcae.models.mae import mae_loss
from lightning_fcae.stages import DCMAEPretrain
from lightning_fcae.stages.optim import adamw
from tests.ddp import REPO, fixed_masking, run_ranks

V, T, D = 80, 5, 12  # padded voxels (5 tiny patches), image tokens T x D
GLOBAL_BATCH = 8


def _fmri(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed)) + torch.linspace(0, 3, V)


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(default_root_dir=tmp_path, **{**defaults, **kwargs})


def _losses(module: DCMAEPretrain, batch: dict, seed: int = 5) -> dict[str, float]:
    torch.manual_seed(seed)  # the same masks for every call
    with torch.no_grad():
        return {k: v.item() for k, v in module.batch_losses(batch).items()}


def test_each_contrast_term_switches_off_with_its_weight():
    torch.manual_seed(0)
    module = DCMAEPretrain(V, size="tiny", self_contrast_weight=0.0, cross_contrast_weight=0.0)
    # phase 1 is the MAE: the same parameters, and with both weights at 0 the same loss
    assert set(module.model.state_dict()) == set(MAE(V, *model_size("tiny")[::2]).state_dict())
    fmri = _fmri(8)
    torch.manual_seed(3)
    plain = mae_loss(module.model(fmri, 0.75))["loss"].item()
    assert _losses(module, {"fmri": fmri}, seed=3) == {"rec": plain, "loss": plain}

    for self_w, cross_w, terms in ((0.7, 0.0, {"self_contrast"}), (0.0, 0.3, {"cross_contrast"})):
        module.hparams.update(self_contrast_weight=self_w, cross_contrast_weight=cross_w)
        losses = _losses(module, {"fmri": fmri}, seed=3)
        assert set(losses) == {"rec", "loss"} | terms
        assert losses["rec"] == pytest.approx(plain)  # the first masking is unchanged by the extra terms
        (term,) = terms
        assert losses[term] > 0.1
        assert losses["loss"] == pytest.approx(plain + (self_w or cross_w) * losses[term])

    module.hparams.update(self_contrast_weight=1.0, cross_contrast_weight=0.5, rec_weight=0.25)
    losses = _losses(module, {"fmri": fmri}, seed=3)
    expected = 0.25 * losses["rec"] + losses["self_contrast"] + 0.5 * losses["cross_contrast"]
    assert losses["loss"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="loss weights"):
        DCMAEPretrain(V, size="tiny", cross_contrast_weight=-1.0)


def test_info_nce_prefers_matched_pairs():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(16, 32, generator=generator)
    matched = query + 0.1 * torch.randn(16, 32, generator=generator)
    shuffled = matched[torch.randperm(16, generator=generator)]
    assert info_nce(query, matched, 0.1).item() < 0.1 < 1.0 < info_nce(query, shuffled, 0.1).item()
    # orthonormal rows: cos 1 with the positive, 0 with the b - 1 negatives
    eye = torch.eye(4)
    expected = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + 3))
    assert info_nce(eye, 3 * eye, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)
    # one-directional, as vis-dec: only the queries' rows are softmaxed
    keys = torch.tensor([[1.0, 0.0], [1.0, 0.1]])
    assert info_nce(torch.eye(2), keys, 1.0).item() != pytest.approx(info_nce(keys, torch.eye(2), 1.0).item())


def test_training_a_contrast_term_lowers_it():
    """30 steps on one batch, with and without the contrast terms: each term ends lower when it is
    trained than under the plain MAE loss (the MAE alone does lower them a little too)."""
    fmri = _fmri()

    def train(**weights) -> dict[str, float]:
        torch.manual_seed(0)
        module = DCMAEPretrain(V, size="tiny", **weights)
        optimizer = adamw(module, lr=3e-3, weight_decay=0.05)
        for _ in range(30):
            loss = module.batch_losses({"fmri": fmri})["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        module.hparams.update(self_contrast_weight=1.0, cross_contrast_weight=1.0)  # report both terms
        return _losses(module, {"fmri": fmri})

    torch.manual_seed(0)  # the initialisation train() starts from
    before = _losses(DCMAEPretrain(V, size="tiny", cross_contrast_weight=1.0), {"fmri": fmri})
    plain = train(self_contrast_weight=0.0, cross_contrast_weight=0.0)
    contrast = train(self_contrast_weight=1.0, cross_contrast_weight=1.0)
    for term in ("self_contrast", "cross_contrast"):
        assert contrast[term] < plain[term] - 0.2 and contrast[term] < before[term] - 0.3, (
            term,
            plain,
            contrast,
        )


def test_checkpoints_feed_stages_2_and_3_and_phase_2(toy_dataset, tmp_path):
    dm = NSDDataModule(str(toy_dataset), batch_size=8, num_workers=0, with_images=False)
    phase1 = DCMAEPretrain(dm.num_voxels, size="tiny")
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(phase1, dm)
    path = str(tmp_path / "dcmae.ckpt")
    trainer.save_checkpoint(path)
    assert checkpoint_models(read_checkpoint(path), path)["model"]["class"] == "DCMAE"
    model = load_model(path, "model")
    assert isinstance(model, DCMAE) and model.guidance is None
    for name, tensor in phase1.model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    encoder = load_fmri_encoder(path)
    for name, tensor in phase1.model.encoder.state_dict().items():
        assert torch.equal(tensor, encoder.state_dict()[name]), name
    fmri = torch.randn(3, dm.num_voxels)
    assert phase1.latents(fmri).shape == (3, dm.num_voxels // 16, 64)  # what LinearProbe reads

    # phase 2 starts from phase 1 (its sizes win over `size`), trains, and chains on the same way
    phase2 = DCMAEPretrain(
        dm.num_voxels, size="small", image_guided=True, init_ckpt=path, clip_tokens=T, clip_dim=D
    )
    assert torch.equal(phase2.model.encoder(fmri), model.encoder(fmri))
    trainer = _trainer(tmp_path, max_steps=2, enable_checkpointing=False)
    trainer.fit(phase2, train_dataloaders=_phase2_batches(dm.num_voxels))
    assert {"train/rec", "train/image_rec", "train/loss"} <= set(trainer.callback_metrics)
    assert not torch.equal(phase2.model.encoder(fmri), model.encoder(fmri))
    path2 = str(tmp_path / "dcmae_image.ckpt")
    trainer.save_checkpoint(path2)
    restored = load_model(path2, "model")  # does not need the phase-1 file: init_ckpt is not followed
    assert restored.guidance is not None
    for name, tensor in phase2.model.state_dict().items():
        assert torch.equal(tensor, restored.state_dict()[name]), name
    assert torch.equal(load_fmri_encoder(path2)(fmri), phase2.model.encoder(fmri))
    with pytest.raises(ValueError, match="same"):
        DCMAEPretrain(dm.num_voxels + 16, init_ckpt=path)


def _phase2_batches(num_voxels: int, n: int = 16) -> DataLoader:
    tokens = torch.randn(
        n, T, D, generator=torch.Generator().manual_seed(2)
    ).half()  # as the cache stores them
    fmri = torch.randn(n, num_voxels, generator=torch.Generator().manual_seed(3))
    return DataLoader([{"fmri": f, "clip_image_tokens": c} for f, c in zip(fmri, tokens, strict=True)], 8)


def test_image_guidance_uses_the_image_tokens():
    torch.manual_seed(0)
    module = DCMAEPretrain(V, size="tiny", image_guided=True, clip_tokens=T, clip_dim=D)
    fmri = _fmri(4)
    tokens = torch.randn(4, T, D)
    losses = _losses(module, {"fmri": fmri, "clip_image_tokens": tokens})
    assert set(losses) == {"rec", "self_contrast", "cross_contrast", "image_rec", "loss"}
    # the fMRI reconstruction and the image-token reconstruction both depend on the image tokens
    other = _losses(module, {"fmri": fmri, "clip_image_tokens": tokens.flip(0)})
    assert other["rec"] != pytest.approx(losses["rec"]) and other["image_rec"] != pytest.approx(
        losses["image_rec"]
    )
    # ... and the image-token reconstruction on the fMRI
    assert _losses(module, {"fmri": fmri.flip(0), "clip_image_tokens": tokens})["image_rec"] != pytest.approx(
        losses["image_rec"]
    )
    loss = module.batch_losses({"fmri": fmri, "clip_image_tokens": tokens})["loss"]
    loss.backward()
    assert all(p.grad is not None for p in module.parameters())  # DDP needs no unused parameters
    with pytest.raises(ValueError, match="clip_model"):
        module.batch_losses({"fmri": fmri})
    with pytest.raises(ValueError, match="clip_tokens"):
        module.batch_losses({"fmri": fmri, "clip_image_tokens": tokens[:, :3]})
    without_image_side = DCMAEPretrain(
        V, size="tiny", image_guided=True, clip_tokens=T, clip_dim=D, image_recon_weight=0.0
    )
    parts = {name for name, _ in without_image_side.model.guidance.named_children()}
    assert parts == {"image_to_fmri", "fmri_cross"}  # the fMRI side only
    assert "image_rec" not in _losses(without_image_side, {"fmri": fmri, "clip_image_tokens": tokens})


@pytest.mark.parametrize("config", ["stage1_dcmae.yaml", "stage1_dcmae_image.yaml"])
def test_cli_fast_dev_run(config, toy_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    phase2 = [
        "--model.init_ckpt=null",
        "--model.clip_tokens=17",  # fcae-clip-tiny: 32 px / patch 8 + cls
        "--model.clip_model=fcae-clip-tiny",
        "--model.clip_pretrained=null",
        "--data.image_size=32",
    ]
    cli = run_lightning_cli(
        [
            "fit",
            f"--config={REPO / 'configs' / config}",
            f"--config={REPO / 'configs' / 'profiles' / 'tiny.yaml'}",
            f"--data.data_dir={toy_dataset}",
            "--trainer.fast_dev_run=true",
            *(phase2 if "image" in config else []),
        ]
    )
    assert cli.trainer.state.finished
    assert cli.model.hparams.num_voxels == 80  # linked from the DataModule
    terms = {"image_rec"} if "image" in config else {"self_contrast", "cross_contrast"}
    for term in terms | {"rec", "loss"}:
        assert math.isfinite(cli.trainer.callback_metrics[f"train/{term}"].item()), term
    # a CLI-made checkpoint (its hyper-parameters carry LightningCLI's private keys) chains on
    cli.trainer.save_checkpoint(tmp_path / "cli.ckpt")
    model = load_model(tmp_path / "cli.ckpt", "model")
    assert isinstance(model, DCMAE) and (model.guidance is not None) == ("image" in config)
    for name, tensor in cli.model.model.encoder.state_dict().items():
        assert torch.equal(tensor, model.encoder.state_dict()[name]), name


def _ddp_module() -> DCMAEPretrain:
    L.seed_everything(0)
    return DCMAEPretrain(V, size="tiny", rec_weight=0.0)  # the contrast terms alone


def test_ddp_contrast_gathers_negatives_from_every_rank(tmp_path, monkeypatch):
    """The first step's loss over two ranks (4 samples each) must equal one process's over all 8: each
    query meets the keys of both ranks. Rank-local negatives would give a different number."""
    monkeypatch.setattr(mae_module, "random_masking", fixed_masking)
    fmri = _fmri(GLOBAL_BATCH)
    module = _ddp_module()
    whole = module.batch_losses({"fmri": fmri})["loss"].item()
    halves = [module.batch_losses({"fmri": fmri[r::2]})["loss"].item() for r in range(2)]
    assert abs(sum(halves) / 2 - whole) > 0.05  # local negatives would be visibly different
    run_ranks([sys.executable, __file__, str(tmp_path)], tmp_path, "two-process DC-MAE fit")
    assert json.loads((tmp_path / "loss.json").read_text()) == pytest.approx(whole, rel=1e-5)


class _FirstLoss(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = pl_module.all_gather(outputs["loss"].detach()).mean().item()
        if trainer.is_global_zero:
            (Path(trainer.default_root_dir) / "loss.json").write_text(json.dumps(loss))


class _Rows(L.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        rows = [{"fmri": f} for f in _fmri(GLOBAL_BATCH)]
        # rank r takes samples r, r + 2, ...: together the ranks' first batches are the whole batch
        sampler = DistributedSampler(rows, self.trainer.world_size, self.trainer.global_rank, shuffle=False)
        return DataLoader(rows, GLOBAL_BATCH // self.trainer.world_size, sampler=sampler)


def _ddp_fit(root: str) -> None:
    """The DDP test's run; Lightning starts rank 1 as this same command."""
    torch.set_num_threads(1)
    mae_module.random_masking = fixed_masking
    trainer = _trainer(
        root, devices=2, strategy="ddp", use_distributed_sampler=False, max_steps=1,
        enable_checkpointing=False, callbacks=[_FirstLoss()],
    )  # fmt: skip
    trainer.fit(_ddp_module(), _Rows())


if __name__ == "__main__":
    _ddp_fit(sys.argv[1])
