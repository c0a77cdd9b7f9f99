"""Reading dataset shards back: decoding and validating each sample, the per-subject norm stats, and the
checks that name a damaged shard (size, sha256, sample count) instead of reading half an epoch.

:mod:`.writer` writes the format; this module is its inverse, used by the DataModule's workers, the data
check and inspection, and the CLIP feature cache.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image, UnidentifiedImageError
from webdataset.tariterators import tarfile_samples

from ..files.hashing import sha256_file
from .schema import (
    FMRI_KEY,
    IMAGE_KEYS,
    Manifest,
    ManifestError,
    NormStatsError,
    SampleError,
    ShardInfo,
    ShardIntegrityError,
    check_sample_key,
)

# Read back, a sample whose voxel count differs from its subject's in the manifest was not written with it
READ_VOXELS_FIX = (
    "the shard and manifest.json are not from the same dataset: put back the manifest.json written with "
    "these shards, or regenerate the dataset (`lightning-fcae data synth` / `data nsd`)"
)


def validate_fmri(fmri: np.ndarray, n_voxels: int, where: str, voxels_fix: str = "") -> np.ndarray:
    """Return ``fmri`` as ``[repeats, voxels]``, or raise naming ``where`` (a key or file); ``voxels_fix``
    ends a voxel-count mismatch's message (what to do about it)."""
    fmri = np.asarray(fmri)
    if fmri.ndim == 1:
        fmri = fmri[None]
    if fmri.ndim != 2 or fmri.shape[0] < 1:
        raise SampleError(f"{where}: fmri must be [repeats, voxels], got shape {fmri.shape}")
    if fmri.shape[1] != n_voxels:
        fix = f"; {voxels_fix}" if voxels_fix else ""
        raise SampleError(f"{where}: fmri has {fmri.shape[1]} voxels, the manifest says {n_voxels}{fix}")
    if not np.isfinite(fmri).all():
        raise SampleError(f"{where}: fmri contains NaN or inf ({int((~np.isfinite(fmri)).sum())} values)")
    return fmri


def validate_captions(captions: object, where: str) -> list[str]:
    if (
        not isinstance(captions, list)
        or not 1 <= len(captions) <= 5
        or not all(isinstance(c, str) and c.strip() for c in captions)
    ):
        raise SampleError(f"{where}: captions must be a list of 1-5 non-empty strings, got {captions!r}")
    return captions


def load_norm_stats(root: str | Path, manifest: Manifest) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-subject (mean, std) float32 arrays, checked against the manifest's voxel counts.

    ``root`` is a local directory or any fsspec URL (``s3://bucket/nsd``, ``file:///data/nsd``).
    """
    import fsspec

    path = f"{str(root).rstrip('/')}/{manifest.norm_stats}"
    try:
        with fsspec.open(path, "rb") as handle:
            payload = handle.read()
    except FileNotFoundError as exc:
        raise ManifestError(f"{path} is missing (named by the manifest's norm_stats)") from exc
    if manifest.norm_stats_sha256 and hashlib.sha256(payload).hexdigest() != manifest.norm_stats_sha256:
        raise NormStatsError(
            f"{path}: sha256 differs from the manifest's norm_stats_sha256 (damaged or replaced?)"
        )
    try:
        with np.load(io.BytesIO(payload)) as data:
            stats = {s: (data[f"{s}_mean"], data[f"{s}_std"]) for s in manifest.subjects}
    except (KeyError, ValueError, OSError) as exc:
        raise NormStatsError(f"{path}: not the per-subject <subject>_mean/_std arrays ({exc})") from exc
    for subject, (mean, std) in stats.items():
        n = manifest.subjects[subject]
        if mean.shape != (n,) or std.shape != (n,):
            raise NormStatsError(
                f"{path}: {subject} stats have shapes {mean.shape} / {std.shape}, manifest says ({n},)"
            )
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise NormStatsError(f"{path}: {subject} stats hold NaN or inf")
        if not (std > 0).all():
            raise NormStatsError(
                f"{path}: {subject} std is <= 0 for {int((std <= 0).sum())} voxels (the dataset writer sets a "
                "dead voxel's std to 1, so this file was not written by it); regenerate the dataset"
            )
    return stats


@functools.lru_cache(maxsize=256)
def _npy_layout(prefix: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data offset) of an .npy whose first bytes are ``prefix``.

    numpy parses the header with ``ast.literal_eval`` on every load, a third of the decode time of a
    small array. Shards repeat a handful of headers (one per subject x repeat count), so parsing each
    distinct header once with numpy's own reader and caching it keeps numpy's validation and is free.
    """
    stream = io.BytesIO(prefix)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    version = np.lib.format.read_magic(stream)
    if version not in read_header:
        raise ValueError(f".npy format version {version} is not supported")
    shape, fortran_order, dtype = read_header[version](stream)
    if fortran_order or dtype.hasobject:
        raise ValueError("expected a C-ordered numeric array")
    return dtype, shape, stream.tell()


def decode_fmri(data: bytes, n_voxels: int, key: str, shard: str | None = None) -> np.ndarray:
    """A sample's ``fmri.npy`` read back and validated; errors name ``shard`` (its ``__url__``) and key."""
    where = f"{shard}: {key}.{FMRI_KEY}" if shard else f"{key}.{FMRI_KEY}"
    try:
        # header length: 2 bytes after magic + version in .npy v1, 4 bytes in v2
        header_len = (
            10 + int.from_bytes(data[8:10], "little")
            if data[6:7] == b"\x01"
            else 12 + int.from_bytes(data[8:12], "little")
        )
        dtype, shape, offset = _npy_layout(bytes(data[:header_len]))
        array = np.frombuffer(data, dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)
    except (ValueError, OSError, TypeError) as exc:
        raise SampleError(f"{where}: not a readable .npy array ({exc})") from exc
    return validate_fmri(array, n_voxels, where, READ_VOXELS_FIX)


def decode_image(data: bytes, key: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:  # PIL names an in-memory file as "<_io.BytesIO ...>"
        reason = "not a PNG or JPEG" if isinstance(exc, UnidentifiedImageError) else exc
        raise SampleError(f"{key}: image does not decode ({reason})") from exc
    return image.convert("RGB")


def decode_json(data: bytes, key: str, name: str) -> object:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SampleError(f"{key}.{name}: invalid JSON ({exc})") from exc


def raise_shard_error(exn: Exception) -> bool:
    """webdataset handler: a broken tar becomes a ShardIntegrityError naming the shard."""
    if isinstance(exn, SampleError):
        raise exn
    source = next((a for a in exn.args if isinstance(a, str) and (".tar" in a)), "unknown shard")
    raise ShardIntegrityError(
        f"{source}: unreadable or truncated shard ({type(exn).__name__}: {exn})"
    ) from exn


class ShardReader:
    """Pipeline stage: shard URLs -> raw samples, checking each shard's sample count.

    A tar cut at a member boundary reads as a shorter, valid archive; counting against the
    manifest is what turns that silent loss into a ShardIntegrityError. Images are not even read
    from the tar when the stage does not need them.
    """

    def __init__(self, expected: dict[str, int], with_images: bool):
        self.expected, self.with_images = expected, with_images

    def _select(self, name: str) -> bool:
        return self.with_images or not name.endswith(IMAGE_KEYS)

    def __call__(self, src):
        for item in src:
            count = 0
            for sample in tarfile_samples([item], handler=raise_shard_error, select_files=self._select):
                count += 1
                check_sample_key(sample["__key__"], item["url"])
                yield sample
            url = item["url"]
            if count != self.expected[url]:
                raise ShardIntegrityError(
                    f"{url}: read {count} samples, the manifest recorded {self.expected[url]} (truncated?)"
                )


def check_shard_file(path: Path, shard: ShardInfo, verify: bool = False) -> None:
    """Compare a local shard with its manifest entry before reading it.

    The size is a stat, so it is always checked: it catches a truncated copy up front, naming the
    shard, instead of a half-read epoch. The sha256 reads the whole file, so only on request.
    """
    if not path.exists():
        raise ManifestError(f"{path} is listed in the manifest but missing on disk")
    size = path.stat().st_size
    if size != shard.bytes:
        raise ShardIntegrityError(
            f"{path}: {size} bytes, the manifest recorded {shard.bytes} (truncated or replaced?)"
        )
    if verify and sha256_file(path) != shard.sha256:
        raise ShardIntegrityError(f"{path}: sha256 differs from the manifest")


def read_shards(root: Path, shards: list[ShardInfo]):
    """Raw samples of a local dataset's shards, with the checks the DataModule makes when streaming
    (size, readable tar, sample count), so ``data check`` and ``inspect`` fail the same named way."""
    paths = [str(root / shard.path) for shard in shards]
    for path, shard in zip(paths, shards):
        check_shard_file(Path(path), shard)
    reader = ShardReader({path: shard.samples for path, shard in zip(paths, shards)}, with_images=True)
    yield from reader({"url": path} for path in paths)


def iter_raw_samples(paths: Iterable[str | Path]):
    """Plain iteration over raw sample dicts of local shards (no manifest needed); a broken tar still
    raises a ShardIntegrityError naming it."""
    for path in paths:
        for sample in wds.WebDataset(
            str(path), shardshuffle=False, empty_check=False, handler=raise_shard_error
        ):
            check_sample_key(sample["__key__"], str(path))
            yield sample
