"""Stage 3: what trains, how the fMRI condition reaches the UNet, learning, sampling, the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightning_fcae.cli import run_lightning_cli
from lightning_fcae.data.datamodule import NSDDataModule
from lightning_fcae.inference.sampling import sample_images
from lightning_fcae.models.ldm import cross_attention_parameters
from lightning_fcae.stages import FCAEPretrain
from lightning_fcae.stages.diffusion import LDMFinetune

REPO = Path(__file__).resolve().parents[1]
V = 80  # the toy dataset's padded voxel count


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(default_root_dir=tmp_path, enable_checkpointing=False, **{**defaults, **kwargs})


def _datamodule(root, **kwargs) -> NSDDataModule:
    return NSDDataModule(str(root), **{"batch_size": 8, "num_workers": 0, "sparsity": 0.0, **kwargs})


def _finetune(**kwargs) -> LDMFinetune:
    torch.manual_seed(0)
    return LDMFinetune(V, **{"clip_tokens": 5, "clip_dim": 16, **kwargs})


def _batch(b=4, size=16) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"fmri": torch.randn(b, V, generator=g), "image": torch.rand(b, 3, size, size, generator=g)}


def _unet_out(module, tokens, pooled, t=500):
    latents = torch.randn(len(tokens), 3, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return module.unet(latents, t, encoder_hidden_states=tokens, class_labels=pooled).sample


def test_trainable_set_is_encoder_token_map_condition_and_unet_cross_attention():
    module = _finetune()
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert module.aligner.regressor is None  # stage 3 encodes every patch: no regressor to carry
    expected = {f"aligner.{n}" for n, _ in module.aligner.named_parameters()}
    expected |= {f"conditioner.{n}" for n, _ in module.conditioner.named_parameters()}
    expected |= {f"unet.{n}" for n in cross_attention_parameters(module.unet)}
    expected |= {f"unet.class_embedding.{n}" for n, _ in module.unet.class_embedding.named_parameters()}
    assert trainable == expected
    unet_trainable = {n[len("unet.") :] for n in trainable if n.startswith("unet.")}
    pattern = (
        r"(.*transformer_blocks\.\d+\.(attn2\.(to_q|to_k|to_v|to_out\.0)|norm2)|class_embedding\.linear_\d)\."
    )
    assert all(re.match(pattern, n) for n in unet_trainable), unet_trainable
    # every cross-attention block of the down, mid and up path is in, and ResNet norm2 layers are out
    assert {n.split(".")[0] for n in unet_trainable} == {
        "down_blocks",
        "mid_block",
        "up_blocks",
        "class_embedding",
    }
    assert not module.unet.down_blocks[0].resnets[0].norm2.weight.requires_grad
    assert not any(p.requires_grad for p in module.vq.parameters())


def test_condition_reaches_unet_through_cross_attention_and_time_embedding():
    module = _finetune().eval()
    tokens, pooled = module.condition(_batch()["fmri"])
    # context: the caption slot (null here) + one slot per CLIP token; pooled: the CLIP-space embedding
    assert tokens.shape == (4, 1 + 5, module.unet.config.cross_attention_dim) and pooled.shape == (4, 16)
    assert torch.equal(tokens[:, 0], module.conditioner.null_text.expand(4, -1))
    base = _unet_out(module, tokens, pooled)
    assert not torch.allclose(_unet_out(module, tokens + 1, pooled), base)
    # the new time-embedding projection starts at zero (the pretrained UNet's output is unchanged) ...
    assert torch.equal(_unet_out(module, tokens, pooled + 1), base)
    # ... and once trained, the pooled vector alone changes the output
    nn.init.normal_(module.unet.class_embedding.linear_2.weight, std=0.1)
    assert not torch.allclose(_unet_out(module, tokens, pooled + 1), _unet_out(module, tokens, pooled))


def _fixed_loss(module, batch) -> float:
    module.eval()  # no condition dropout; the same noise and timesteps each time
    with torch.no_grad():
        return sum(module.loss(batch, torch.Generator().manual_seed(s)).item() for s in range(4)) / 4


def test_finetune_learns_and_leaves_frozen_weights_untouched(toy_dataset, tmp_path):
    L.seed_everything(0)
    module = _finetune(lr=1e-3)
    batch = next(iter(_datamodule(toy_dataset).val_dataloader()))
    batch["image"] = batch["image"].float() / 255
    names = [
        "vq.encoder.conv_in.weight",
        "unet.down_blocks.0.resnets.0.conv1.weight",
        "unet.down_blocks.0.resnets.0.norm2.weight",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    ]
    trained = [
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        "unet.class_embedding.linear_2.weight",
        "conditioner.image_proj.weight",
        "aligner.mapper.token_map.weight",
        "aligner.encoder.blocks.0.attn.qkv.weight",
    ]
    before = {n: p.detach().clone() for n, p in module.named_parameters() if n in names + trained}
    loss_before = _fixed_loss(module, batch)

    module.train()
    _trainer(tmp_path, max_steps=40, limit_val_batches=0).fit(module, _datamodule(toy_dataset))
    after = dict(module.named_parameters())
    for name in names:
        assert torch.equal(after[name], before[name]), name
    for name in trained:  # moved by gradients, not just by weight decay (that would be < 1e-4 here)
        assert (after[name] - before[name]).abs().max() > 5e-3, name
    assert not module.vq.training
    assert _fixed_loss(module, batch) < 0.9 * loss_before


def test_condition_gain_is_the_loss_rise_under_another_samples_fmri():
    """val/condition_gain compares the loss with each sample's own fMRI against a neighbour's under the
    same noise: exactly zero when every sample has the same fMRI, non-zero otherwise."""
    module = _finetune().eval()
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value.item())
    batch = _batch() | {"key": [str(i) for i in range(4)]}
    with torch.no_grad():
        module.validation_step(batch, 0)
        expected = module.loss(batch, torch.Generator().manual_seed(0)).item()
        assert logged["val/loss"] == pytest.approx(expected, rel=1e-6)
        assert logged["val/condition_gain"] != 0
        gain_pct = 100 * logged["val/condition_gain"] / logged["val/loss"]
        assert logged["val/condition_gain_pct"] == pytest.approx(gain_pct, rel=1e-5)
        same = batch | {"fmri": batch["fmri"][:1].expand(4, -1)}
        module.validation_step(same, 3)
    assert logged["val/condition_gain"] == 0


def test_encoder_from_stage1_checkpoint(toy_dataset, tmp_path):
    stage1 = FCAEPretrain(V, size="tiny")
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(stage1, _datamodule(toy_dataset, with_images=False))
    trainer.save_checkpoint(tmp_path / "stage1.ckpt")
    module = _finetune(encoder_ckpt=str(tmp_path / "stage1.ckpt"))
    for (name, ours), theirs in zip(
        module.aligner.encoder.state_dict().items(), stage1.model.encoder.state_dict().values()
    ):
        assert torch.equal(ours, theirs), name
    # a stage-1 encoder has no token map: stage 3 starts a new one on the condition's CLIP grid
    assert module.aligner.mapper.token_map.out_features == 5 and module.aligner.mapper.proj.out_features == 16
    with pytest.raises(ValueError, match="voxels"):
        LDMFinetune(V + 16, encoder_ckpt=str(tmp_path / "stage1.ckpt"))


def test_sampling_shape_range_guidance_and_determinism():
    module = _finetune().eval()
    tokens, pooled = module.condition(_batch(3)["fmri"])
    null_tokens, null_pooled = module.conditioner.null(3)
    args = (module.unet, module.vq, module.noise_scheduler.config, tokens, pooled)

    def sample(*nulls, guidance=3.0, seed=0):
        g = torch.Generator().manual_seed(seed)
        return sample_images(*args, *nulls, steps=4, guidance=guidance, generator=g)

    images = sample(null_tokens, null_pooled)
    assert images.shape == (3, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, sample(null_tokens, null_pooled))
    assert not torch.equal(images, sample(null_tokens, null_pooled, seed=1))
    assert not torch.allclose(images, sample(null_tokens, null_pooled, guidance=1.0))
    # guidance with a "null" equal to the condition is the plain conditional path (w=1, no null pass)
    assert torch.allclose(sample(tokens, pooled, guidance=3.0), sample(guidance=1.0), atol=1e-5)
    with pytest.raises(ValueError, match="null condition"):
        sample(guidance=2.0)

    recon = module.sample(_batch(2)["fmri"], steps=3, samples=2, seed=5)
    assert recon.shape == (2, 2, 3, 16, 16)
    assert torch.equal(recon, module.sample(_batch(2)["fmri"], steps=3, samples=2, seed=5))
    assert not torch.equal(recon[:, 0], recon[:, 1])  # samples of one fMRI differ


def test_per_row_generators_make_rows_independent_of_the_batch():
    module = _finetune().eval()
    fmri = _batch(3)["fmri"]
    a, b, c = fmri[0:1], fmri[1:2], fmri[2:3]

    def recon(rows, seed, samples=2):
        return module.sample(torch.cat(rows), steps=3, samples=samples, seed=seed)

    def close(x, y):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)

    batched = recon([a, b], [7, 11])
    assert batched.shape == (2, 2, 3, 16, 16)
    close(batched, torch.cat([recon([a], 7), recon([b], 11)]))  # = one int-seeded call per row
    close(recon([c, a], [3, 7])[1], batched[0])  # row a's images, whatever sits beside it
    assert not torch.allclose(batched[:, 0], batched[:, 1], atol=1e-3)  # a row's samples differ
    assert not torch.allclose(recon([a, a], [7, 8])[0], recon([a, a], [7, 8])[1], atol=1e-3)
    with pytest.raises(ValueError, match="3 generators for 2"):
        recon([a, b], [1, 2, 3])

    # sample_images itself, with DDIM noise at every step (eta > 0) drawn per row too
    tokens, pooled = module.condition(fmri)
    null_tokens, null_pooled = module.conditioner.null(3)
    args = (module.unet, module.vq, module.noise_scheduler.config)

    def sample(rows, seeds):
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        return sample_images(
            *args, tokens[rows], pooled[rows], null_tokens[rows], null_pooled[rows],
            steps=3, guidance=3.0, generator=generators, eta=0.5,
        )  # fmt: skip

    together = sample([0, 1, 2], [1, 2, 3])
    close(together[1:2], sample([1], [2]))
    close(together[::2], sample([0, 2], [1, 3]))
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        sample([0, 1, 2], [1, 2])


# --- CompVis checkpoint conversion: write a tiny CompVis-named checkpoint from a diffusers LDM --------------


def test_cli_fast_dev_run(toy_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_lightning_cli(
        [
            "fit",
            f"--config={REPO / 'configs' / 'stage3_ldm.yaml'}",
            f"--data.data_dir={toy_dataset}",
            "--data.batch_size=4",
            "--data.num_workers=0",
            "--model.pretrained_ldm=null",
            "--model.ldm_config=tiny",
            "--model.encoder_ckpt=null",
            "--model.encoder_size=tiny",
            "--model.clip_tokens=5",
            "--model.clip_dim=16",
            "--trainer.fast_dev_run=true",
        ]
    )
    assert cli.trainer.state.finished
    assert cli.model.hparams.num_voxels == V
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
