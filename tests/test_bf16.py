"""Stages 1 -> 2 -> 3 chained under ``precision: bf16-mixed``, the precision every config picks on a GPU.

On CPU the same autocast paths run (bf16 matmuls, float32 losses and norms), so a dtype mismatch
between them (a bf16 activation meeting a float32 buffer, a bf16 tensor saved as an image) fails in CI,
not first on a rented GPU. The GPU parameter runs the same chain on CUDA (``pytest -m gpu``).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_fcae.data.datamodule import NSDDataModule
from lightning_fcae.stages import FCAEPretrain
from lightning_fcae.stages.align import FCAEAlign
from lightning_fcae.stages.diffusion import LDMFinetune

ACCELERATORS = [
    "cpu",
    pytest.param(
        "gpu",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]


def _fit(module: L.LightningModule, data: NSDDataModule, root, accelerator: str) -> L.Trainer:
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, precision="bf16-mixed", max_steps=2, limit_val_batches=1,
        val_check_interval=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    trainer.fit(module, data)
    return trainer


@pytest.mark.parametrize("accelerator", ACCELERATORS)
def test_every_stage_trains_and_samples_under_bf16_mixed(accelerator, toy_dataset, tmp_path):
    L.seed_everything(0)
    data = NSDDataModule(str(toy_dataset), batch_size=8, num_workers=0, image_size=32)
    stage1 = _fit(FCAEPretrain(data.num_voxels, size="tiny"), data, tmp_path, accelerator)
    assert torch.isfinite(stage1.callback_metrics["train/loss"])
    stage1.save_checkpoint(tmp_path / "stage1.ckpt")

    align = FCAEAlign(
        data.num_voxels, encoder_ckpt=str(tmp_path / "stage1.ckpt"), clip_tokens=17, n_way=2,
        clip_model="fcae-clip-tiny", clip_features="live",
    )  # fmt: skip
    stage2 = _fit(align, data, tmp_path, accelerator)
    for name in ("train/cos", "train/contrastive", "val/loss", "val/top1_2way"):
        assert torch.isfinite(stage2.callback_metrics[name]), name
    stage2.save_checkpoint(tmp_path / "stage2.ckpt")

    data = NSDDataModule(str(toy_dataset), batch_size=8, num_workers=0, image_size=16)
    ldm = LDMFinetune(data.num_voxels, encoder_ckpt=str(tmp_path / "stage2.ckpt"), image_size=16)
    stage3 = _fit(ldm, data, tmp_path, accelerator)
    for name in ("train/loss", "val/loss", "val/condition_gain"):
        assert torch.isfinite(stage3.callback_metrics[name]), name
    fmri = torch.randn(2, data.num_voxels, device=ldm.device)
    with torch.autocast(ldm.device.type, torch.bfloat16):
        images = ldm.sample(fmri, steps=2, seed=[0, 1])
    assert images.shape == (2, 1, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
