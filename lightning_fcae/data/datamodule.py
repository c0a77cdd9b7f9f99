"""``NSDDataModule``: the one LightningDataModule every stage trains and evaluates on.

It streams webdataset shards (local paths or any URL webdataset/fsspec opens), multi-subject, with
shards split by node and worker. Training draws shards with replacement (``ResampledShards``) and a
fixed number of batches per epoch, so every DDP rank sees exactly the same number of batches and
no rank ever waits on a collective that another rank skipped.

A batch is a dict::

    fmri      float32 [b, length]   z-scored voxels, zero-padded to a multiple of patch_size
    n_voxels  int64   [b]           real voxel count (unpad with fmri[i, :n_voxels[i]])
    subject   int64   [b]           index into ``datamodule.subjects``
    image     float32 [b, 3, s, s]  in [0, 1] (absent when with_images=False)
    labels    dict[str, int64 [b]]  meta.json labels (-1 where a sample lacks one)
    captions  list[list[str]]; key list[str]
    ...                             per-image features a stage asked for (``stream_image_features``),
                                    e.g. frozen-CLIP features (lightning_fcae.stages.clip_features.BATCH_KEYS)
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
import webdataset as wds

from .schema import (
    CAPTIONS_KEY,
    FMRI_KEY,
    IMAGE_KEYS,
    META_KEY,
    DatasetNotFoundError,
    Manifest,
    ManifestError,
    SampleError,
    ShardCountError,
    check_arguments,
)
from .shards import (
    ShardReader,
    check_shard_file,
    decode_fmri,
    decode_image,
    decode_json,
    load_norm_stats,
    validate_captions,
)
from .transforms import (
    RepeatMode,
    image_to_uint8_chw,
    normalise_and_pad,
    padded_length,
    random_sparsity,
    reduce_repeats,
)

# image id -> {name: tensor}: features stored per image, added to each sample of that image
ImageFeatures = Callable[[int], dict[str, torch.Tensor]]

# webdataset warns that with_length() only sets __len__: that is exactly what it is used for here
warnings.filterwarnings("ignore", message=r"\.with_length\(\) only sets the value")


def is_local(path: str) -> bool:
    return "://" not in path and not path.startswith("pipe:")


def read_manifest(data_dir: str) -> Manifest:
    if is_local(data_dir):
        return Manifest.load(data_dir)
    import fsspec

    url = data_dir.rstrip("/") + "/manifest.json"
    try:
        with fsspec.open(url, "r") as handle:
            return Manifest.from_dict(json.load(handle), origin=url)
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"{url} not found") from exc


class SampleDecoder:
    """Raw tar members -> one validated, normalised sample. Picklable, so it runs in workers."""

    def __init__(
        self,
        subjects: dict[str, int],
        stats: dict[str, tuple[np.ndarray, np.ndarray]],
        length: int,
        repeats: RepeatMode,
        with_images: bool,
        image_size: int | None,
        seed: int,
        image_features: ImageFeatures | None = None,
    ):
        self.subjects, self.stats, self.length = subjects, stats, length
        self.image_features = image_features
        self.subject_index = {s: i for i, s in enumerate(subjects)}
        self.repeats, self.with_images, self.image_size = repeats, with_images, image_size
        self.seed = seed
        self.rng: np.random.Generator | None = None

    def __call__(self, raw: dict) -> dict:
        if self.rng is None:  # seeded lazily, per worker, so workers draw different repeats
            info = torch.utils.data.get_worker_info()
            self.rng = np.random.default_rng([self.seed, 0 if info is None else info.id])
        key = raw["__key__"]
        for required in (FMRI_KEY, CAPTIONS_KEY, META_KEY):
            if required not in raw:
                raise SampleError(f"{raw.get('__url__', '?')}: sample {key} has no {required}")
        meta = decode_json(raw[META_KEY], key, META_KEY)
        subject = meta.get("subject")
        if subject not in self.subjects:
            raise SampleError(f"{key}: meta.json subject {subject!r} is not in the manifest")
        fmri = decode_fmri(raw[FMRI_KEY], self.subjects[subject], key, raw.get("__url__"))
        voxels = reduce_repeats(fmri, self.repeats, self.rng)
        mean, std = self.stats[subject]
        sample = {
            "key": key,
            "fmri": torch.from_numpy(normalise_and_pad(voxels, mean, std, self.length)),
            "n_voxels": self.subjects[subject],
            "subject": self.subject_index[subject],
            "captions": validate_captions(decode_json(raw[CAPTIONS_KEY], key, CAPTIONS_KEY), key),
            "labels": meta.get("labels", {}),
        }
        if self.with_images:
            image_key = next((k for k in IMAGE_KEYS if k in raw), None)
            if image_key is None:
                raise SampleError(f"{key}: no image ({' or '.join(IMAGE_KEYS)})")
            sample["image"] = image_to_uint8_chw(decode_image(raw[image_key], key), self.image_size)
        if self.image_features is not None:
            if not isinstance(meta.get("image_id"), int):
                raise SampleError(
                    f"{key}: meta.json has no integer image_id to look its image's features up by"
                )
            sample.update(self.image_features(meta["image_id"]))
        return sample


def collate(samples: list[dict]) -> dict:
    label_names = sorted({name for s in samples for name in s["labels"]})
    batch = {
        "key": [s["key"] for s in samples],
        "fmri": torch.stack([s["fmri"] for s in samples]),
        "n_voxels": torch.tensor([s["n_voxels"] for s in samples]),
        "subject": torch.tensor([s["subject"] for s in samples]),
        "captions": [s["captions"] for s in samples],
        "labels": {n: torch.tensor([s["labels"].get(n, -1) for s in samples]) for n in label_names},
    }
    for name, value in samples[0].items():  # the image and any per-image features
        if name not in batch and isinstance(value, torch.Tensor):
            batch[name] = torch.stack([s[name] for s in samples])
    return batch


class NSDDataModule(L.LightningDataModule):
    """Streams fMRI-image-caption shards for every stage.

    Args:
        data_dir: dataset root (local path, or an fsspec URL such as ``s3://bucket/nsd``).
        subjects: subset of the manifest's subjects (e.g. ``[subj01]``); all by default.
        batch_size: per-device batch size.
        num_workers: DataLoader workers per device.
        patch_size: voxels are zero-padded to a multiple of this (must match the model).
        with_images: decode images (stage 1 does not need them; skipping doubles throughput).
        image_size: resize images to this side; None keeps the stored size.
        sparsity: fraction of voxels zeroed at random in training batches (paper: 0.2).
        shuffle_buffer: samples held for shuffling in each training worker.
        train_repeats / eval_repeats: how ``[repeats, voxels]`` becomes one vector.
        verify_shards: sha256-check every local shard at setup (sizes are always checked).
        seed: seeds shard resampling, shuffling and repeat draws.

    A stage whose batches need per-image features (frozen-CLIP features: stage 2, vis-dec's image-guided
    phase, the stand-in UNet) hands this module their lookup with :meth:`stream_image_features` in its
    ``setup``; which CLIP is the stage's argument (``model.init_args.clip_model``), not the data's.
    """

    def __init__(
        self,
        data_dir: str = "data/synthetic-small",
        subjects: list[str] | None = None,
        batch_size: int = 32,
        num_workers: int = 2,
        patch_size: int = 16,
        with_images: bool = True,
        image_size: int | None = None,
        sparsity: float = 0.2,
        shuffle_buffer: int = 1000,
        train_repeats: RepeatMode = "random",
        eval_repeats: RepeatMode = "average",
        verify_shards: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        # fail here, naming the argument, not deep in a DataLoader (batch_size=0 was a ZeroDivisionError)
        checks = (
            ("batch_size", batch_size, batch_size >= 1, ">= 1"),
            ("num_workers", num_workers, num_workers >= 0, ">= 0"),
            ("patch_size", patch_size, patch_size >= 1, ">= 1"),
            ("image_size", image_size, image_size is None or image_size >= 1, "None or >= 1"),
            ("sparsity", sparsity, 0.0 <= sparsity < 1.0, "in [0, 1)"),
            ("shuffle_buffer", shuffle_buffer, shuffle_buffer >= 0, ">= 0"),
        )
        check_arguments(checks, error=ValueError)
        self.data_dir = str(data_dir)
        self.manifest = read_manifest(self.data_dir)
        wanted = list(self.manifest.subjects) if subjects is None else list(subjects)
        missing = [s for s in wanted if s not in self.manifest.subjects]
        if missing:
            raise ManifestError(
                f"{self.data_dir}: no subject(s) {missing}; it has {sorted(self.manifest.subjects)}"
            )
        self.subjects = {s: self.manifest.subjects[s] for s in wanted}
        # every subject is padded to one common length so batches can mix subjects
        self.num_voxels = padded_length(max(self.subjects.values()), patch_size)
        self._stats: dict | None = None
        self._image_features: ImageFeatures | None = None

    def stream_image_features(self, lookup: ImageFeatures | None) -> None:
        """From the next dataloader on, add ``lookup(image_id)`` to every sample (stacked into the batch
        under its keys). The lookup must pickle (it runs in DataLoader workers); None stops it."""
        self._image_features = lookup

    @property
    def image_size(self) -> int:
        return self.hparams.image_size or self.manifest.image_size

    def num_samples(self, split: str) -> int:
        return sum(s.samples for s in self.manifest.shards(split, list(self.subjects)))

    def _reader(self, urls: list[str], split: str) -> ShardReader:
        counts = [s.samples for s in self.manifest.shards(split, list(self.subjects))]
        return ShardReader(dict(zip(urls, counts)), self.hparams.with_images)

    def _urls(self, split: str) -> list[str]:
        shards = self.manifest.shards(split, list(self.subjects))
        if not shards:
            raise ManifestError(
                f"{self.data_dir}: split {split!r} has no shards for subjects {list(self.subjects)}"
            )
        if not is_local(self.data_dir):
            return [f"{self.data_dir.rstrip('/')}/{s.path}" for s in shards]
        urls = []
        for shard in shards:
            path = Path(self.data_dir) / shard.path
            check_shard_file(path, shard, verify=self.hparams.verify_shards)
            urls.append(str(path))
        return urls

    def norm_stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per subject, the training split's voxel ``(mean, std)`` that z-scores every sample (checked
        against the manifest on first use)."""
        if self._stats is None:
            self._stats = load_norm_stats(self.data_dir, self.manifest)
        return {s: self._stats[s] for s in self.subjects}

    def _decoder(self, repeats: RepeatMode) -> SampleDecoder:
        return SampleDecoder(
            self.subjects,
            self.norm_stats(),
            self.num_voxels,
            repeats,
            self.hparams.with_images,
            self.image_size,
            self.hparams.seed,
            self._image_features,
        )

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.world_size, trainer.global_rank
        return 1, 0

    def train_dataloader(self) -> wds.WebLoader:
        world, _ = self._world()
        hp = self.hparams
        batches_per_rank = max(1, self.num_samples("train") // (hp.batch_size * world))
        workers = max(1, hp.num_workers)
        urls = self._urls("train")
        # resampled shards: each rank x worker draws shards at random, seeded per rank/worker and epoch
        shards = wds.ResampledShards(urls, seed=hp.seed, deterministic=True)
        # seeded (seed + epoch): a run is reproducible; ranks/workers already differ by shard draw
        shuffle = wds.detshuffle(hp.shuffle_buffer, initial=min(hp.shuffle_buffer, 100), seed=hp.seed)
        # both count epochs from -1 (each pass adds one before drawing): a run resumed at epoch k must
        # draw epoch k's data, not replay epoch 0's
        shards.epoch = shuffle.epoch = (self.trainer.current_epoch if self.trainer is not None else 0) - 1
        pipeline = wds.DataPipeline(
            shards,
            self._reader(urls, "train"),
            shuffle,
            wds.map(self._decoder(hp.train_repeats)),
            wds.batched(hp.batch_size, collation_fn=collate, partial=False),
        ).with_epoch(math.ceil(batches_per_rank / workers))
        return self._loader(pipeline, hp.num_workers, batches_per_rank)

    def eval_dataloader(self, split: str, every_rank_all: bool = False) -> wds.WebLoader:
        """A split in order, repeats reduced by ``eval_repeats``, ending in a partial batch; split across
        ranks and workers, or whole on every rank with ``every_rank_all`` (a closed-form fit that every
        rank must make alike: stage 2's linear path)."""
        world, _ = (1, 0) if every_rank_all else self._world()
        urls = self._urls(split)
        if len(urls) < world:
            raise ShardCountError(
                f"split {split!r} has {len(urls)} shard(s) for {world} ranks: every rank needs one. "
                "Rewrite the dataset with fewer samples per shard, or evaluate on fewer devices."
            )
        # never more workers than a rank's shards, or the surplus workers would idle
        workers = min(self.hparams.num_workers, len(urls) // world)
        stages = [wds.SimpleShardList(urls)] + ([] if every_rank_all else [wds.split_by_node])
        pipeline = wds.DataPipeline(
            *stages,
            wds.split_by_worker,
            self._reader(urls, split),
            wds.map(self._decoder(self.hparams.eval_repeats)),
            wds.batched(self.hparams.batch_size, collation_fn=collate, partial=True),
        )
        return self._loader(pipeline, workers, self._eval_batches(split, workers, every_rank_all))

    def _eval_batches(self, split: str, workers: int, every_rank_all: bool = False) -> int:
        """How many batches this rank's eval loader yields, which Lightning takes as the number to run:
        rank r streams the shards ``r::world`` (split_by_node), worker w of them ``w::workers``
        (split_by_worker), and every worker batches its own stream, ending in a partial batch. One
        count over the whole split would stop early and leave samples unscored."""
        world, rank = (1, 0) if every_rank_all else self._world()
        counts = [s.samples for s in self.manifest.shards(split, list(self.subjects))][rank::world]
        streams = [counts[w::workers] for w in range(workers)] if workers > 0 else [counts]
        return sum(math.ceil(sum(stream) / self.hparams.batch_size) for stream in streams)

    def _loader(self, pipeline: wds.DataPipeline, workers: int, length: int) -> wds.WebLoader:
        loader = wds.WebLoader(
            pipeline,
            batch_size=None,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )
        return loader.with_length(length)

    def val_dataloader(self) -> wds.WebLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> wds.WebLoader:
        return self.eval_dataloader("test")

    def predict_dataloader(self) -> wds.WebLoader:
        return self.eval_dataloader("test")

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """On the device: uint8 images -> float [0, 1]; random sparsity on training batches only."""
        if "image" in batch:
            batch["image"] = batch["image"].float().div_(255)
        if self.trainer is not None and self.trainer.training:
            batch["fmri"] = random_sparsity(batch["fmri"], self.hparams.sparsity)
        return batch
