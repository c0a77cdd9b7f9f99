"""Writing a dataset: ``DatasetWriter`` is the only way data enters the format.

The synthetic generator and the NSD converter both call it, so validation, per-voxel statistics, hashes and
the manifest are produced in one place; :mod:`.shards` reads what it writes.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from .. import __version__
from ..files.hashing import sha256_file
from .schema import (
    CAPTIONS_KEY,
    FMRI_KEY,
    IMAGE_KEYS,
    MANIFEST_NAME,
    META_KEY,
    NORM_STATS_NAME,
    SPLITS,
    Manifest,
    ShardInfo,
    SplitInfo,
    sample_key,
)
from .shards import validate_captions, validate_fmri

_FIXED_MTIME = 0  # tar entries get a fixed mtime so shards are byte-identical for the same seed


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def encode_png(image: Image.Image | np.ndarray) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


class _RunningMoments:
    """Per-voxel mean/std over training trials, accumulated in float64 so 10^5 trials stay exact."""

    def __init__(self, n_voxels: int):
        self.count = 0
        self.total = np.zeros(n_voxels, np.float64)
        self.total_sq = np.zeros(n_voxels, np.float64)

    def update(self, fmri: np.ndarray) -> None:
        values = fmri.astype(np.float64)
        self.count += values.shape[0]
        self.total += values.sum(0)
        self.total_sq += np.square(values).sum(0)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count == 0:
            return np.zeros_like(self.total, np.float32), np.ones_like(self.total, np.float32)
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - mean**2, 0.0)
        std = np.sqrt(var)
        std[std < 1e-6] = 1.0  # dead voxels: leave them at zero instead of dividing by ~0
        return mean.astype(np.float32), std.astype(np.float32)


class DatasetWriter:
    """Writes one dataset directory: per (split, subject) rolling shards + manifest + norm stats.

    Use as a context manager; the manifest is written only on a clean exit, so an interrupted run
    never leaves a dataset that looks complete.
    """

    def __init__(
        self,
        root: str | Path,
        name: str,
        subjects: dict[str, int],
        image_size: int,
        source: dict,
        samples_per_shard: int = 1000,
        overwrite: bool = False,
    ):
        self.root = Path(root)
        if (self.root / MANIFEST_NAME).exists() and not overwrite:
            raise FileExistsError(
                f"{self.root} already holds a dataset; pass overwrite=True (--overwrite) to replace it"
            )
        if self.root.exists() and overwrite:
            for split in SPLITS:
                shutil.rmtree(self.root / split, ignore_errors=True)
            (self.root / MANIFEST_NAME).unlink(missing_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.subjects = dict(subjects)
        self.image_size = image_size
        self.source = {"lightning_fcae": __version__, **source}
        self.samples_per_shard = samples_per_shard
        self._writers: dict[tuple[str, str], wds.ShardWriter] = {}
        self._shards: dict[str, list[ShardInfo]] = {split: [] for split in SPLITS}
        self._moments = {s: _RunningMoments(n) for s, n in self.subjects.items()}
        self._keys: set[tuple[str, str]] = set()

    def _writer(self, split: str, subject: str) -> wds.ShardWriter:
        if (split, subject) not in self._writers:
            (self.root / split).mkdir(exist_ok=True)
            pattern = str(self.root / split / f"{subject}-%06d.tar")
            writer = wds.ShardWriter(pattern, maxcount=self.samples_per_shard, verbose=0, mtime=_FIXED_MTIME)

            def record(fname: str, writer=writer, split=split, subject=subject) -> None:
                path = Path(fname)
                self._shards[split].append(
                    ShardInfo(
                        path=str(path.relative_to(self.root)),
                        subject=subject,
                        samples=writer.count,
                        bytes=path.stat().st_size,
                        sha256=sha256_file(path),
                    )
                )

            writer.post = record
            self._writers[(split, subject)] = writer
        return self._writers[(split, subject)]

    def write(
        self,
        split: str,
        subject: str,
        image_id: int,
        fmri: np.ndarray,
        image: Image.Image | np.ndarray,
        captions: list[str],
        coco_id: int | None = None,
        labels: dict[str, int] | None = None,
    ) -> str:
        """Validate and append one sample; returns its key."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if subject not in self.subjects:
            raise ValueError(f"subject {subject!r} is not among {sorted(self.subjects)}")
        key = sample_key(subject, image_id)
        if (split, key) in self._keys:
            raise ValueError(f"duplicate sample {key} in split {split}")
        self._keys.add((split, key))
        fmri = validate_fmri(fmri, self.subjects[subject], key)
        captions = validate_captions(list(captions), key)
        if split == "train":
            self._moments[subject].update(fmri)
        meta = {
            "subject": subject,
            "image_id": int(image_id),
            "coco_id": None if coco_id is None else int(coco_id),
            "split": split,
            "labels": {k: int(v) for k, v in (labels or {}).items()},
        }
        self._writer(split, subject).write(
            {
                "__key__": key,
                FMRI_KEY: encode_npy(fmri.astype(np.float16)),
                IMAGE_KEYS[0]: encode_png(image),
                CAPTIONS_KEY: json.dumps(captions).encode(),
                META_KEY: json.dumps(meta).encode(),
            }
        )
        return key

    def close(self) -> Manifest:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        stats = {}
        for subject, moments in self._moments.items():
            stats[f"{subject}_mean"], stats[f"{subject}_std"] = moments.finish()
        stats_path = self.root / NORM_STATS_NAME
        np.savez(stats_path, **stats)
        manifest = Manifest(
            name=self.name,
            subjects=self.subjects,
            splits={
                split: SplitInfo(sorted(shards, key=lambda s: s.path))
                for split, shards in self._shards.items()
                if shards
            },
            source=self.source,
            image_size=self.image_size,
            norm_stats_sha256=sha256_file(stats_path),
        )
        manifest.save(self.root)
        return manifest

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # leave shards for inspection but no manifest: the dataset is visibly incomplete
            for writer in self._writers.values():
                writer.close()
