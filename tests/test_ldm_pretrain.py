"""The stand-in LDM (VQ, then a UNet conditioned on CLIP features) and the condition encoder it shares
with stage 3."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_fcae.cli import run_lightning_cli
from lightning_fcae.data.datamodule import NSDDataModule
from lightning_fcae.models.condition import ClipCondition
from lightning_fcae.models.ldm import load_ldm
from lightning_fcae.stages.diffusion import LDMFinetune
from lightning_fcae.stages.ldm_pretrain import LDMPretrain

REPO = Path(__file__).resolve().parents[1]
V = 80  # the toy dataset's padded voxel count
CLIP = {"clip_model": "fcae-clip-tiny"}  # random weights: 17 tokens x 512, enough to condition on


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(default_root_dir=tmp_path, enable_checkpointing=False, **{**defaults, **kwargs})


def _datamodule(root, **kwargs) -> NSDDataModule:
    return NSDDataModule(str(root), **{"batch_size": 8, "num_workers": 0, "sparsity": 0.0, **kwargs})


def _condition() -> ClipCondition:
    torch.manual_seed(0)
    condition = ClipCondition(clip_tokens=3, clip_dim=8, context_dim=4)
    condition.set_means(torch.randn(3, 8), torch.randn(8))
    return condition


def test_condition_centres_normalises_and_fills_nulls():
    condition = _condition()
    tokens, text = torch.randn(2, 3, 8), torch.randn(2, 8)
    context, pooled = condition(tokens, text)
    assert context.shape == (2, 1 + 3, 4) and pooled.shape == (2, 8)
    # raw features are centred on the training means; stage 2's predictions come centred already
    centred = condition(tokens - condition.image_mean, text - condition.text_mean, centred=True)
    assert torch.allclose(centred[0], context, atol=1e-6)
    # only the direction counts: stage 2's cosine loss learns directions, not norms
    assert torch.allclose(
        condition(3 * (tokens - condition.image_mean), centred=True)[0][:, 1:], context[:, 1:]
    )
    assert torch.allclose(pooled, F.normalize(tokens[:, 0] - condition.image_mean[0], dim=-1) * 8**0.5)
    # a slot not given, or not kept, holds its learned null; all nulls = the null condition
    keep = torch.tensor([True, False])
    kept, kept_pooled = condition(tokens, text, keep_image=keep, keep_text=~keep)
    null_context, null_pooled = condition.null(2)
    assert torch.equal(kept[0, 1:], context[0, 1:]) and torch.equal(kept[1, 1:], null_context[1, 1:])
    assert torch.equal(kept[0, :1], null_context[0, :1]) and torch.equal(kept[1, :1], context[1, :1])
    assert torch.equal(kept_pooled[1], null_pooled[1])
    text_only, text_pooled = condition(text=text)
    assert torch.equal(text_only[:, 1:], null_context[:, 1:]) and torch.equal(text_pooled, null_pooled)
    with pytest.raises(ValueError, match="image_tokens or text"):
        condition()


def test_condition_save_load_keeps_means(tmp_path):
    condition = _condition()
    condition.save_pretrained(tmp_path / "condition")
    loaded = ClipCondition.from_pretrained(tmp_path / "condition")
    tokens = torch.randn(2, 3, 8)
    assert torch.equal(loaded.image_mean, condition.image_mean)
    assert torch.equal(loaded(tokens)[0], condition(tokens)[0])


def test_pretrain_export_load_round_trip(toy_dataset, tmp_path):
    L.seed_everything(0)
    out = tmp_path / "ldm"
    vq_part = LDMPretrain(part="vq", ldm_config="tiny", export_dir=str(out))
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(vq_part, _datamodule(toy_dataset))
    assert (out / "vqvae").is_dir() and not (out / "unet").exists()
    assert torch.isfinite(trainer.callback_metrics["train/rec"])

    unet_part = LDMPretrain(part="unet", ldm_config="tiny", export_dir=str(out), clip_tokens=17, **CLIP)
    data = _datamodule(toy_dataset)
    _trainer(tmp_path, max_steps=3, limit_val_batches=0).fit(unet_part, data)
    assert unet_part.latent_scale > 0
    # the condition is centred on the training split's CLIP means (from the feature cache)
    from lightning_fcae.stages.clip_features import cache_path, clip_cache_id, train_means

    means = train_means(cache_path(toy_dataset, clip_cache_id("fcae-clip-tiny", None)))
    assert torch.allclose(unet_part.condition.image_mean, means["image_tokens"])
    ldm = load_ldm(out)
    assert ldm.vq.config.scaling_factor == pytest.approx(unet_part.latent_scale.item())
    assert ldm.scheduler.config.num_train_timesteps == 1000
    assert torch.equal(ldm.condition.image_mean, unet_part.condition.image_mean)

    x, t = torch.rand(4, 3, 16, 16) * 2 - 1, 700
    tokens = torch.randn(4, 17, 512, generator=torch.Generator().manual_seed(3))
    latents = torch.randn(4, 3, 4, 4)
    with torch.no_grad():
        context, pooled = unet_part.condition(tokens)
        assert torch.equal(ldm.vq.encode(x).latents, unet_part.vq.encode(x).latents)
        reference = unet_part.unet(latents, t, encoder_hidden_states=context, class_labels=pooled).sample
        assert torch.equal(
            ldm.unet(latents, t, encoder_hidden_states=context, class_labels=pooled).sample, reference
        )

        # fine-tuning starts from the pretrained UNet and its own condition encoder (time path included)
        finetune = LDMFinetune(V, pretrained_ldm=str(out))
        assert finetune.unet.config.projection_class_embeddings_input_dim == 512
        context_ft, pooled_ft = finetune.conditioner(tokens)
        out_ft = finetune.unet(latents, t, encoder_hidden_states=context_ft, class_labels=pooled_ft).sample
        assert torch.allclose(out_ft, reference, atol=1e-6)


def test_unet_part_needs_the_clip_feature_cache(toy_dataset, tmp_path):
    out = tmp_path / "ldm"
    vq_part = LDMPretrain(part="vq", ldm_config="tiny", export_dir=str(out))
    _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(vq_part, _datamodule(toy_dataset))
    unet_part = LDMPretrain(part="unet", ldm_config="tiny", export_dir=str(out), clip_tokens=17, clip_dim=512)
    with pytest.raises(ValueError, match="clip_model"):
        _trainer(tmp_path, max_steps=1).fit(unet_part, _datamodule(toy_dataset))
    with pytest.raises(
        ValueError, match="clip_tokens x clip_dim 50 x 512 disagree with clip_model fcae-clip-tiny"
    ):
        LDMPretrain(part="unet", ldm_config="tiny", export_dir=str(out), clip_tokens=50, **CLIP)
    with pytest.raises(ValueError, match="keep_text"):
        LDMPretrain(part="vq", ldm_config="tiny", keep_text=1.5)


def test_cli_ldm_pretrain_two_parts(toy_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "fit", f"--config={REPO / 'configs' / 'ldm_pretrain.yaml'}", f"--data.data_dir={toy_dataset}",
        "--data.batch_size=4", "--data.num_workers=0", "--model.ldm_config=tiny", "--model.clip_tokens=17",
    ]  # fmt: skip
    # a smoke test writes nothing that could replace trained weights: no export, no last.ckpt
    run_lightning_cli([*args, "--model.part=vq", "--trainer.fast_dev_run=true"])
    assert not (tmp_path / "checkpoints").exists()
    for part, extra in (
        ("vq", []),
        ("unet", ["--model.clip_model=fcae-clip-tiny", "--model.clip_pretrained=null"]),
    ):
        cli = run_lightning_cli(
            [*args, *extra, f"--model.part={part}", "--trainer.max_steps=1", "--trainer.limit_val_batches=0"]
        )
        assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    ldm = load_ldm(tmp_path / "checkpoints" / "ldm" / "synthetic-small")  # the config's export_dir
    assert ldm.vq.config.scaling_factor == pytest.approx(cli.model.latent_scale.item())
    assert ldm.condition is not None
