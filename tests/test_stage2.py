"""Stage 2: CLIP stays frozen, loss terms follow their flags, alignment buys identification, chaining."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_fcae.cli import run_lightning_cli
from lightning_fcae.data.datamodule import NSDDataModule
from lightning_fcae.models.align import FMRIAligner, TokenMapper, token_cosine_loss
from lightning_fcae.models.factory import load_fmri_aligner, load_fmri_encoder
from lightning_fcae.stages import FCAEPretrain
from lightning_fcae.stages.align import FCAEAlign

REPO = Path(__file__).resolve().parents[1]
TINY_CLIP = {
    "clip_model": "fcae-clip-tiny",
    "clip_features": "live",
    "clip_tokens": 17,
    "clip_dim": 512,
}  # 32 px / patch 8 + cls


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(default_root_dir=tmp_path, enable_checkpointing=False, **{**defaults, **kwargs})


def test_token_mapper_and_masked_latents():
    torch.manual_seed(0)
    module = FCAEAlign(80, clip_tokens=5, clip_dim=12)
    fmri = torch.randn(3, 80)
    assert module.aligner(fmri).shape == (3, 5, 12)
    # with masking, the masked positions come from the regressor, not from the encoder
    generator = torch.Generator().manual_seed(1)
    masked = module.aligner.latents(fmri, mask_ratio=0.5, generator=generator)
    full = module.aligner.latents(fmri)
    assert masked.shape == full.shape
    assert not torch.allclose(masked, full)
    assert TokenMapper(4, 8, 2, 3)(torch.randn(2, 4, 8)).shape == (2, 2, 3)
    # the embedding readout is patch-specific: moving a feature to another patch changes token 0 only
    # through it (the shared token map sees a permutation-weighted average either way)
    mapper = TokenMapper(4, 8, 2, 3, embed_rank=2)
    latents = torch.randn(1, 4, 8)
    swapped = latents[:, [1, 0, 2, 3]]
    with torch.no_grad():
        mapper.token_map.weight.fill_(0.25)  # every patch weighted alike: the old mapper cannot tell
        off = TokenMapper(4, 8, 2, 3, embed_rank=0)
        off.load_state_dict(mapper.state_dict(), strict=False)
        assert torch.allclose(off(latents), off(swapped), atol=1e-6)
        assert not torch.allclose(mapper(latents)[:, 0], mapper(swapped)[:, 0])
        assert torch.allclose(mapper(latents)[:, 1:], mapper(swapped)[:, 1:], atol=1e-6)
    assert token_cosine_loss(torch.ones(2, 3, 4), torch.ones(2, 3, 4)).item() == pytest.approx(0.0)
    assert token_cosine_loss(torch.ones(2, 3, 4), -torch.ones(2, 3, 4)).item() == pytest.approx(2.0)


def test_clip_is_frozen_bit_identical_and_left_out_of_checkpoints(toy_dataset, tmp_path):
    L.seed_everything(0)
    dm = NSDDataModule(str(toy_dataset), batch_size=8, num_workers=0, image_size=32)
    module = FCAEAlign(dm.num_voxels, **TINY_CLIP)
    clip_before = {k: v.clone() for k, v in module.clip.state_dict().items()}
    aligner_before = {k: v.clone() for k, v in module.aligner.state_dict().items()}
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(module, dm)
    assert all(torch.equal(v, module.clip.state_dict()[k]) for k, v in clip_before.items())
    assert not all(torch.equal(v, module.aligner.state_dict()[k]) for k, v in aligner_before.items())
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in module.clip.parameters())
    path = tmp_path / "stage2.ckpt"
    trainer.save_checkpoint(path)
    assert not any(k.startswith("clip.") for k in torch.load(path, weights_only=True)["state_dict"])
    restored = load_fmri_aligner(path)  # strict, with neither CLIP nor the stage-1 file
    for key, value in module.aligner.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key


@pytest.mark.parametrize(("flags", "terms"), [((True, False), {"cos"}), ((False, True), {"contrastive"})])
def test_loss_terms_follow_their_flags(flags, terms, toy_dataset, tmp_path):
    dm = NSDDataModule(str(toy_dataset), batch_size=8, num_workers=0, image_size=32)
    module = FCAEAlign(dm.num_voxels, use_image=flags[0], use_text=flags[1], **TINY_CLIP)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, dm)
    logged = {k.removeprefix("train/") for k in trainer.callback_metrics if k.startswith("train/")}
    assert logged == terms | {"loss"}
    with pytest.raises(ValueError, match="train nothing"):
        FCAEAlign(dm.num_voxels, use_image=False, use_text=False)


def test_the_clip_grid_follows_from_clip_model():
    """A config names its CLIP once: the token grid follows from its architecture (fcae-clip-tiny:
    (32 / 8)^2 + 1 = 17 x 512) and is saved resolved; a grid set against it is refused at once, naming
    the settings, not as a tensor-size error from deep in a training step."""
    module = FCAEAlign(80, clip_model="fcae-clip-tiny")
    assert (module.hparams.clip_tokens, module.hparams.clip_dim) == (17, 512)
    assert module.clip_token_mean.shape == (17, 512)
    with pytest.raises(
        ValueError, match="65 x 512 disagree with clip_model fcae-clip-tiny .17 x 512.: leave"
    ):
        FCAEAlign(80, clip_tokens=65, clip_model="fcae-clip-tiny")
    with pytest.raises(ValueError, match="set clip_model .the grid follows from it. or clip_tokens"):
        FCAEAlign(80)


def test_alignment_identifies_unseen_images_better_than_before(synthetic_tiny, tmp_path):
    """Cached features of a random-init tiny CLIP still tell images apart, so aligning to them must
    let fMRI identify held-out test images (2-way, per subject) better than the untrained aligner.
    The text term is off: a random-init CLIP's caption embeddings are unrelated to its image
    embeddings, so the two terms would pull the fMRI embedding apart (with the trained CLIP stand-in
    they agree; measured in the closing note of issue 4)."""
    L.seed_everything(0)
    dm = NSDDataModule(
        str(synthetic_tiny),
        batch_size=32,
        num_workers=0,
        with_images=False,
        sparsity=0.0,
    )
    module = FCAEAlign(
        dm.num_voxels,
        n_way=10,
        lr=1e-3,
        mask_ratio=0.0,
        use_text=False,
        clip_tokens=17,
        clip_model="fcae-clip-tiny",
    )
    _trainer(tmp_path, max_steps=0, limit_val_batches=0).fit(module, dm)  # setup: target means from the cache
    assert module.clip_embed_mean.abs().sum() > 0
    before = _trainer(tmp_path).test(module, dm, verbose=False)[0]["test/top1_2way"]
    _trainer(tmp_path, max_steps=300, limit_val_batches=0).fit(module, dm)
    after = _trainer(tmp_path).test(module, dm, verbose=False)[0]["test/top1_2way"]
    assert after > 0.66 and after > before + 0.15, (before, after)  # measured: 0.51 -> 0.74


def test_stage1_checkpoint_feeds_stage2(toy_dataset, tmp_path):
    dm = NSDDataModule(str(toy_dataset), batch_size=8, num_workers=0, with_images=False)
    stage1 = FCAEPretrain(dm.num_voxels, size="tiny")
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(stage1, dm)
    trainer.save_checkpoint(tmp_path / "stage1.ckpt")
    module = FCAEAlign(dm.num_voxels, encoder_ckpt=str(tmp_path / "stage1.ckpt"), clip_tokens=5, clip_dim=8)
    for key, value in stage1.model.encoder.state_dict().items():
        assert torch.equal(value, module.aligner.encoder.state_dict()[key])
    assert isinstance(module.aligner, FMRIAligner) and module.aligner.regressor is not None
    with pytest.raises(ValueError, match="padded voxels"):
        FCAEAlign(dm.num_voxels + 16, encoder_ckpt=str(tmp_path / "stage1.ckpt"))


def test_cli_fast_dev_run(toy_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_lightning_cli(
        [
            "fit",
            f"--config={REPO / 'configs' / 'stage2_align.yaml'}",
            f"--config={REPO / 'configs' / 'ablations' / 'image_only.yaml'}",
            f"--data.data_dir={toy_dataset}",
            "--model.clip_model=fcae-clip-tiny",
            "--model.clip_pretrained=null",
            "--data.num_workers=0",
            "--data.image_size=32",
            "--model.encoder_ckpt=null",
            "--model.clip_tokens=17",
            "--trainer.fast_dev_run=true",
        ]
    )
    assert cli.trainer.state.finished
    assert "train/contrastive" not in cli.trainer.callback_metrics


def test_stage2_checkpoint_feeds_stage3(toy_dataset, tmp_path):
    dm = NSDDataModule(str(toy_dataset), batch_size=8, num_workers=0, image_size=32)
    module = FCAEAlign(dm.num_voxels, **TINY_CLIP)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, dm)
    trainer.save_checkpoint(tmp_path / "stage2.ckpt")
    encoder = load_fmri_encoder(str(tmp_path / "stage2.ckpt"))
    for key, value in module.aligner.encoder.state_dict().items():
        assert torch.equal(value, encoder.state_dict()[key]), key


def test_stage3_takes_stage2s_token_map_on_the_same_clip_grid(toy_dataset, tmp_path):
    from lightning_fcae.stages.diffusion import LDMFinetune
    from lightning_fcae.stages.stage3_aligner import stage3_aligner

    dm = NSDDataModule(str(toy_dataset), batch_size=8, num_workers=0, image_size=32)
    module = FCAEAlign(dm.num_voxels, **TINY_CLIP)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, dm)
    path = str(tmp_path / "stage2.ckpt")
    trainer.save_checkpoint(path)
    aligner = stage3_aligner(path, 17, 512)
    assert aligner.regressor is None  # stage 3 encodes every patch
    fmri = torch.randn(3, dm.num_voxels)
    module.aligner.eval()
    with torch.no_grad():  # the same tokens as stage 2's evaluation (every patch visible)
        assert torch.allclose(aligner.eval()(fmri), module.aligner(fmri, mask_ratio=0.0))
    with pytest.raises(ValueError, match="same CLIP model"):
        stage3_aligner(path, 50, 512)  # an LDM pretrained on another CLIP's grid
    # without an LDM pretrained on CLIP features, stage 3 builds its condition on stage 2's grid
    stage3 = LDMFinetune(dm.num_voxels, encoder_ckpt=path, clip_tokens=50)
    assert stage3.conditioner.config.clip_tokens == 17


def test_a_wrong_embedding_costs_as_much_as_every_patch_token_wrong():
    """The image term weighs token 0, the fMRI embedding that identification, the text term and stage 3's
    time embedding read, as much as all patch tokens together: with ViT-B/32's 50 tokens the plain mean gave
    it 2% of the term (issue 22's diagnosis: on data whose patch tokens are hard to predict the embedding
    barely trained). Hand-computed: a token pointing away from its target costs 1 - cos = 2."""
    target = torch.randn(4, 50, 8)
    pred = target.clone()
    pred[:, 0] = -target[:, 0]  # only the embedding is wrong
    assert token_cosine_loss(pred, target).item() == pytest.approx(0.5 * 2)
    wrong_patches = -target
    wrong_patches[:, 0] = target[:, 0]  # every patch token wrong, the embedding right
    assert token_cosine_loss(wrong_patches, target).item() == pytest.approx(0.5 * 2)
    assert token_cosine_loss(pred, target, embed_weight=None).item() == pytest.approx(2 / 50)  # the old mean
    with pytest.raises(ValueError, match="embed_weight must be in"):
        FCAEAlign(80, clip_tokens=5, clip_dim=12, embed_weight=1.5)
