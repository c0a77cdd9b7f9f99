"""Shared fixtures: small hand-made datasets written through the real DatasetWriter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_fcae.data.writer import DatasetWriter

# Tests run beside other processes (DataLoader workers, DDP ranks) on 2 cores: one intra-op thread
# per process avoids OpenMP threads spinning against each other (a 50x slowdown seen here).
torch.set_num_threads(1)

VOXELS = {"subj01": 40, "subj02": 70}


def write_toy_dataset(root, n_train=48, n_val=8, n_test=8, samples_per_shard=8, seed=0, image_size=16):
    """Two subjects with known voxel statistics (mean 1 + voxel/10, std 2) and 3 labelled classes."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(root, "toy", VOXELS, image_size, {"generator": "toy"}, samples_per_shard) as writer:
        for subject, n in VOXELS.items():
            offset = 1 + np.arange(n) / 10
            for split, count, repeats in (("train", n_train, 1), ("val", n_val, 1), ("test", n_test, 3)):
                for i in range(count):
                    image_id = {"train": 0, "val": 1000, "test": 2000}[split] + i
                    colour = np.full((image_size, image_size, 3), (i * 37) % 256, np.uint8)
                    writer.write(
                        split,
                        subject,
                        image_id,
                        offset + 2 * rng.normal(size=(repeats, n)),
                        colour,
                        [f"toy image {i}"],
                        labels={"shape": i % 3},
                    )
    return root


@pytest.fixture
def toy_dataset(tmp_path):
    return write_toy_dataset(tmp_path / "toy")


@pytest.fixture(scope="session")
def synthetic_tiny(tmp_path_factory):
    """The embedded default benchmark at its tiny profile, generated once per test session."""
    from lightning_fcae.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    generate("tiny", root, seed=0, progress=False)
    return root


@pytest.fixture(autouse=True)
def _no_wandb_network(monkeypatch):
    """Tests never talk to W&B: loggers are created but do nothing."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
