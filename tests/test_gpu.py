"""GPU paths: bf16-mixed training of stage 1 through Lightning, and fused attention kernels.

Skipped on machines without CUDA (CI); run on a GPU with ``pytest -m gpu``.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_fcae.data.datamodule import NSDDataModule
from lightning_fcae.models import FCAE, fcae_loss, model_size
from lightning_fcae.stages import FCAEPretrain, MAEPretrain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("stage", [FCAEPretrain, MAEPretrain])
def test_bf16_mixed_training_on_gpu(stage, toy_dataset, tmp_path):
    L.seed_everything(0)
    dm = NSDDataModule(str(toy_dataset), batch_size=16, num_workers=0, with_images=False)
    module = stage(dm.num_voxels, size="tiny", compile=True)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=20,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        limit_val_batches=1,
    )
    trainer.fit(module, dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert trainer.optimizers[0].defaults.get("fused") is True  # params were on the GPU when it was built


def test_flash_attention_kernel_runs_the_encoder():
    """Only the flash kernel allowed: this raises if the model's attention cannot use it."""
    torch.manual_seed(0)
    model = FCAE(1024, *model_size("tiny")).cuda()
    x = torch.randn(8, 1024, device="cuda")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", torch.bfloat16):
        loss = fcae_loss(model(x), model.discretizer, 2.0)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)
