"""Run FCAEPretrain for a few steps on 1 or 2 CPU processes (gloo) and dump what must agree.

    python tests/scripts/ddp_equivalence.py --devices 2 --out result.json [--data DIR]

Part 1: fixed tensors at an equal *global* batch (8 = 1 x 8 = 2 x 4) with a sample-independent
mask, so one process and two must give the same per-step losses and the same final weights.
Part 2 (with --data): one epoch of NSDDataModule; every rank must run the same number of batches.
"""

from __future__ import annotations

import argparse
import json

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import lightning_fcae.models.fcae as fcae_module
from lightning_fcae.data.datamodule import NSDDataModule
from lightning_fcae.stages import FCAEPretrain
from tests.ddp import fixed_masking

GLOBAL_BATCH, STEPS, VOXELS = 8, 3, 128


class RecordLosses(L.Callback):
    def __init__(self):
        self.losses, self.batches = [], 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(pl_module.all_gather(outputs["loss"].detach()).mean().item())
        self.batches += 1


def stack_rows(rows: list[tuple[torch.Tensor]]) -> dict:
    return {"fmri": torch.stack([row[0] for row in rows])}


class TensorBatches(L.LightningDataModule):
    def __init__(self, per_device: int):
        super().__init__()
        self.per_device = per_device
        self.fmri = torch.randn(GLOBAL_BATCH * STEPS, VOXELS, generator=torch.Generator().manual_seed(1))

    def train_dataloader(self):
        dataset = TensorDataset(self.fmri)
        # rank r takes samples r, r + world, ... in order, so the union of the ranks' step-k
        # batches is exactly the single process's step-k batch
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(dataset, world, rank, shuffle=False)
        return DataLoader(dataset, self.per_device, sampler=sampler, collate_fn=stack_rows)


def trainer(devices: int, callback: L.Callback, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        use_distributed_sampler=False,
        **kwargs,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)  # two ranks on two cores
    fcae_module.random_masking = fixed_masking
    L.seed_everything(0)
    module = FCAEPretrain(VOXELS, size="tiny", warmup_fraction=0.0)
    record = RecordLosses()
    run = trainer(args.devices, record, max_steps=STEPS)
    run.fit(module, TensorBatches(GLOBAL_BATCH // args.devices))
    result = {"losses": record.losses, "weights": [p.detach().sum().item() for p in module.parameters()]}

    if args.data:
        counts = RecordLosses()
        data = NSDDataModule(args.data, batch_size=4, num_workers=1, with_images=False)
        epoch = trainer(args.devices, counts, max_epochs=1, limit_val_batches=0)
        epoch.fit(FCAEPretrain(data.num_voxels, size="tiny"), data)
        result["batches_per_rank"] = (
            epoch.strategy.all_gather(torch.tensor(counts.batches)).flatten().tolist()
        )
        result["expected_batches"] = data.num_samples("train") // (4 * args.devices)
    if run.global_rank == 0:
        with open(args.out, "w") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    main()
