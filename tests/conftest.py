"""Shared fixtures: small hand-made datasets written through the real DatasetWriter."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_fcae.data.shards import DatasetWriter

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
