"""The shared DataModule: batches, normalisation, splits, augmentation, and every bad-input error."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import webdataset as wds

from lightning_fcae.data.datamodule import NSDDataModule
from lightning_fcae.data.schema import (
    DatasetNotFoundError,
    Manifest,
    ManifestError,
    SampleError,
    SampleKeyError,
    ShardCountError,
    ShardIntegrityError,
)
from lightning_fcae.data.shards import iter_raw_samples
from lightning_fcae.data.writer import encode_npy
from lightning_fcae.files.hashing import sha256_file

from .conftest import VOXELS


def _datamodule(root, **kwargs) -> NSDDataModule:
    defaults = dict(batch_size=4, num_workers=0, patch_size=16, sparsity=0.0)
    return NSDDataModule(str(root), **{**defaults, **kwargs})


def _all_batches(loader) -> list[dict]:
    return list(loader)


def _mutate_first_sample(root: Path, mutate, split: str = "train") -> Path:
    """Rewrite the first shard of ``split`` with its first sample changed; keep the manifest consistent."""
    manifest = Manifest.load(root)
    shard = manifest.splits[split].shards[0]
    path = root / shard.path
    samples = [
        {k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"}
        for s in iter_raw_samples([path])
    ]
    mutate(samples[0])
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    shard.bytes, shard.sha256 = path.stat().st_size, sha256_file(path)
    manifest.save(root)
    return path


def test_batches_are_padded_normalised_and_labelled(toy_dataset):
    dm = _datamodule(toy_dataset)
    assert dm.num_voxels == 80  # max(40, 70) padded to a multiple of 16
    batches = _all_batches(dm.val_dataloader())
    fmri = torch.cat([b["fmri"] for b in batches])
    n_voxels = torch.cat([b["n_voxels"] for b in batches])
    assert fmri.shape == (16, 80) and sorted(n_voxels.unique().tolist()) == [40, 70]
    for row, n in zip(fmri, n_voxels):
        assert torch.all(row[n:] == 0)  # padding is exactly zero
    # toy voxels are 1 + v/10 + 2*N(0,1): after z-scoring with train stats the mean offset is gone
    real = torch.cat([row[:n] for row, n in zip(fmri, n_voxels)])
    assert abs(real.mean().item()) < 0.15 and 0.8 < real.std().item() < 1.2
    batch = batches[0]
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 16, 16)
    assert set(batch["labels"]) == {"shape"} and batch["labels"]["shape"].max() <= 2
    assert isinstance(batch["captions"][0], list)


@pytest.mark.parametrize(("workers", "batch_size"), [(0, 16), (2, 16), (2, 3)])
def test_eval_split_yields_every_sample_once_across_workers(toy_dataset, workers, batch_size):
    """Lightning runs ``len(loader)`` eval batches: that count must cover every sample, although each
    worker ends its own stream with a partial batch (2 workers x 8 samples at batch 16: 2 batches)."""
    loader = _datamodule(toy_dataset, num_workers=workers, batch_size=batch_size).test_dataloader()
    keys = [k for b in itertools.islice(loader, len(loader)) for k in b["key"]]
    assert len(keys) == len(set(keys)) == 16
    assert len(list(loader)) == len(loader)  # and no batch beyond it


def test_test_repeats_are_averaged_unless_asked(toy_dataset):
    averaged = _datamodule(toy_dataset, subjects=["subj01"])
    single = _datamodule(toy_dataset, subjects=["subj01"], eval_repeats="random")
    a = torch.cat([b["fmri"] for b in averaged.test_dataloader()])
    s = torch.cat([b["fmri"] for b in single.test_dataloader()])
    # averaging 3 trials of unit-variance noise shrinks the spread by about sqrt(3)
    assert a[:, :40].std() < 0.75 * s[:, :40].std()


def test_training_epoch_has_fixed_length_and_sparsity_only_in_training(toy_dataset):
    dm = _datamodule(toy_dataset, num_workers=2, sparsity=0.2)
    loader = dm.train_dataloader()
    batches = _all_batches(loader)
    assert len(batches) == len(loader) == 96 // 4
    batch = {"fmri": torch.ones(64, 80), "image": torch.zeros(1, 3, 2, 2, dtype=torch.uint8)}

    class _Trainer:
        training = True

    dm.trainer = _Trainer()
    zeroed = (dm.on_after_batch_transfer(dict(batch), 0)["fmri"] == 0).float().mean().item()
    assert 0.17 < zeroed < 0.23
    dm.trainer.training = False
    assert (dm.on_after_batch_transfer(dict(batch), 0)["fmri"] == 1).all()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_run_draws_the_data_of_its_epoch(toy_dataset, workers):
    """Lightning builds a new train loader when a run resumes at epoch k: it must draw epoch k's
    shards and shuffle, not replay epoch 0's (the same batches the model already trained on)."""

    def keys(loader) -> list[str]:
        return [key for batch in loader for key in batch["key"]]

    loader = _datamodule(toy_dataset, num_workers=workers).train_dataloader()
    epochs = [keys(loader) for _ in range(3)]
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    resumed = _datamodule(toy_dataset, num_workers=workers)
    resumed.trainer = SimpleNamespace(current_epoch=2, world_size=1, global_rank=0)
    assert keys(resumed.train_dataloader()) == epochs[2]


def test_subject_selection(toy_dataset):
    dm = _datamodule(toy_dataset, subjects=["subj02"])
    assert dm.num_voxels == 80 and dm.num_samples("train") == 48
    with pytest.raises(ManifestError, match="subj09"):
        _datamodule(toy_dataset, subjects=["subj09"])


def test_missing_dataset_names_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="lightning-fcae data synth"):
        _datamodule(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="manifest.json.*lightning-fcae data synth"):
        _datamodule(tmp_path / "empty")


@pytest.mark.parametrize(
    ("argument", "value"),
    [("batch_size", 0), ("batch_size", -1), ("num_workers", -1), ("patch_size", 0), ("sparsity", 1.0)],
)
def test_invalid_arguments_are_named(toy_dataset, argument, value):
    with pytest.raises(ValueError, match=rf"{argument} must be .*got {value}"):
        _datamodule(toy_dataset, **{argument: value})


def test_manifest_that_disagrees_with_shards(toy_dataset):
    shard = toy_dataset / Manifest.load(toy_dataset).splits["val"].shards[0].path
    shard.unlink()
    with pytest.raises(ManifestError, match="missing on disk"):
        _datamodule(toy_dataset).val_dataloader()


def test_truncated_shard(toy_dataset):
    shard = toy_dataset / Manifest.load(toy_dataset).splits["train"].shards[0].path
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardIntegrityError, match="bytes"):
        _datamodule(toy_dataset).train_dataloader()
    # even when the manifest is (wrongly) updated to match, reading names the broken shard
    manifest = Manifest.load(toy_dataset)
    manifest.splits["train"].shards[0].bytes = shard.stat().st_size
    manifest.save(toy_dataset)
    with pytest.raises(ShardIntegrityError, match=shard.name):
        _all_batches(_datamodule(toy_dataset, subjects=["subj01"]).train_dataloader())


def test_sha256_verification(toy_dataset):
    shard = toy_dataset / Manifest.load(toy_dataset).splits["val"].shards[0].path
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(data))
    _datamodule(toy_dataset).val_dataloader()  # sizes match: only hashing can tell
    with pytest.raises(ShardIntegrityError, match="sha256"):
        _datamodule(toy_dataset, verify_shards=True).val_dataloader()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update({"fmri.npy": encode_npy(np.zeros((1, 39), np.float16))}), "39 voxels"),
        (lambda s: s.update({"fmri.npy": encode_npy(np.full((1, 40), np.nan, np.float16))}), "NaN"),
        (lambda s: s.update({"image.png": b"not a png"}), "image does not decode"),
        (lambda s: s.update({"captions.json": json.dumps([]).encode()}), "captions"),
        (lambda s: s.update({"captions.json": json.dumps(["  "]).encode()}), "captions"),
    ],
    ids=["voxel-count", "nan", "image", "no-captions", "blank-caption"],
)
def test_bad_samples_raise_named_errors(toy_dataset, mutate, message):
    _mutate_first_sample(toy_dataset, mutate)
    dm = _datamodule(toy_dataset, subjects=["subj01"], shuffle_buffer=1)
    with pytest.raises(SampleError, match=message) as info:
        _all_batches(dm.train_dataloader())
    assert "subj01_nsd" in str(info.value)  # the message names the sample


def test_a_voxel_count_mismatch_names_the_shard_the_key_and_the_fix(toy_dataset, capsys):
    """Shards read with another dataset's manifest: say where, and that they do not belong together."""
    from lightning_fcae.cli import main

    path = _mutate_first_sample(toy_dataset, lambda s: s.update({"fmri.npy": encode_npy(np.zeros((1, 39)))}))
    dm = _datamodule(toy_dataset, subjects=["subj01"], shuffle_buffer=1)
    with pytest.raises(SampleError) as info:
        _all_batches(dm.train_dataloader())
    message = str(info.value)
    assert message.startswith(f"{path}: subj01_nsd000000.fmri.npy: fmri has 39 voxels, the manifest says 40")
    assert "not from the same dataset" in message and "regenerate the dataset" in message
    with pytest.raises(SystemExit) as exit_info:  # data check reads it the same way, as one error line
        main(["data", "check", str(toy_dataset)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith(f"error: {path}: subj01_nsd")


@pytest.mark.parametrize("key", ["../../../elsewhere/PWNED", "/abs/dir/PWNED", "subj01_nsd1_x"])
def test_a_key_that_would_become_a_path_elsewhere_is_refused(toy_dataset, key):
    path = _mutate_first_sample(toy_dataset, lambda s: s.update({"__key__": key}))
    dm = _datamodule(toy_dataset, subjects=["subj01"], shuffle_buffer=1)
    with pytest.raises(SampleKeyError, match=f"{path}: sample key '{key}' is not of the form"):
        _all_batches(dm.train_dataloader())
    with pytest.raises(SampleKeyError):  # the readers of data check, inspect and the CLIP cache too
        list(iter_raw_samples([path]))


def test_fewer_shards_than_ranks(toy_dataset):
    dm = _datamodule(toy_dataset, subjects=["subj01"])

    class _Trainer:
        world_size, global_rank = 4, 0

    dm.trainer = _Trainer()
    with pytest.raises(ShardCountError, match="4 ranks"):
        dm.val_dataloader()


def test_writer_refuses_to_overwrite_and_manifest_is_atomic(toy_dataset):
    from lightning_fcae.data.writer import DatasetWriter

    with pytest.raises(FileExistsError, match="overwrite"):
        DatasetWriter(toy_dataset, "again", VOXELS, 16, {})
    # an interrupted write leaves no manifest behind
    partial = toy_dataset.parent / "partial"
    with pytest.raises(RuntimeError), DatasetWriter(partial, "p", VOXELS, 16, {}) as writer:
        writer.write("train", "subj01", 1, np.zeros((1, 40)), np.zeros((4, 4, 3), np.uint8), ["x"])
        raise RuntimeError("interrupted")
    assert not (partial / "manifest.json").exists()
    shutil.rmtree(partial)


def test_norm_stats_are_training_moments(toy_dataset):
    with np.load(toy_dataset / "norm_stats.npz") as stats:
        mean = stats["subj01_mean"]
    expected = 1 + np.arange(40) / 10
    assert np.abs(mean - expected).max() < 1.2  # 48 draws of 2*N(0,1): 4 sigma is ~1.2


def _rewrite_norm_stats(root: Path, change, rehash: bool = True) -> None:
    path = root / "norm_stats.npz"
    with np.load(path) as data:
        arrays = dict(data)
    change(arrays)
    np.savez(path, **arrays)
    if rehash:
        manifest = Manifest.load(root)
        manifest.norm_stats_sha256 = sha256_file(path)
        manifest.save(root)


@pytest.mark.parametrize(
    ("change", "rehash", "message"),
    [
        (lambda a: a["subj01_std"].__setitem__(3, 0.0), True, "subj01 std is <= 0 for 1 voxels"),
        (lambda a: a["subj01_mean"].__setitem__(0, np.nan), True, "subj01 stats hold NaN"),
        (lambda a: a.pop("subj01_std"), True, "not the per-subject"),
        (lambda a: a.update(subj01_std=a["subj01_std"][:-1]), True, r"shapes \(40,\) / \(39,\)"),
        (lambda a: a["subj01_std"].__setitem__(3, 2.0), False, "sha256 differs"),
    ],
    ids=["zero-std", "nan", "missing", "shape", "hash"],
)
def test_damaged_norm_stats_are_named_before_training(toy_dataset, change, rehash, message):
    from lightning_fcae.data.schema import NormStatsError

    _rewrite_norm_stats(toy_dataset, change, rehash)
    with pytest.raises(NormStatsError, match=message):
        _datamodule(toy_dataset).train_dataloader()


def test_datasets_stream_from_urls(toy_dataset):
    """Any fsspec/webdataset URL works like a local path (here file://, as s3:// or gs:// would)."""
    dm = _datamodule(f"file://{toy_dataset}", num_workers=2)
    keys = [k for b in dm.test_dataloader() for k in b["key"]]
    assert len(keys) == len(set(keys)) == 16
    assert len(list(dm.train_dataloader())) == 24
