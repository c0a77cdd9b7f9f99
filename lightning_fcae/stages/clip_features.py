"""Frozen-CLIP features of a dataset's images: the one home of the feature cache and of the batch keys
that carry its features (``clip_image_tokens``, ``clip_image_embed``, ``clip_text_embed``).

CLIP is frozen wherever its features are targets or conditions (stage 2, vis-dec's image-guided phase,
the stand-in LDM's UNet), so running it every step would only repeat the same forward passes. The stage
that wants features names its CLIP and, through :func:`stream_clip_features`, builds the cache once
(``prepare_data``) and hands the DataModule a per-image lookup (``setup``): the DataModule streams
whatever per-image features it is given and knows nothing of CLIP. The cache lives next to the shards::

    DATA_DIR/features/<cache_id>/          cache_id = <model>-<sha256(weights)[:12]>, <model>-random
        meta.json                          model, weights, manifest sha256, T, D, splits, created
        <split>/image_ids.npy              int64   [N]        sorted, distinct NSD image ids
        <split>/image_tokens.npy           float16 [N, T, D]  FrozenClip.image_tokens
        <split>/image_embed.npy            float16 [N, D]     L2-normalised image embedding
        <split>/text_embed.npy             float16 [N, D]     renormalised mean caption embedding

Rows are per image id, not per sample key: NSD's shared test images are seen by every subject, and a
repeated id must carry the same image and captions (checked at build). Plain ``.npy`` files open
memory-mapped, so each DataLoader worker reads only the rows it needs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import __version__
from ..data.schema import CAPTIONS_KEY, IMAGE_KEYS, MANIFEST_NAME, META_KEY, SPLITS, DatasetError, Manifest
from ..data.shards import decode_image, decode_json, iter_raw_samples, validate_captions
from ..data.transforms import image_to_uint8_chw
from ..files.atomic import atomic_folder
from ..files.hashing import sha256_file

if TYPE_CHECKING:  # models.clip imports open_clip (seconds): only the functions that load CLIP do
    from ..models.clip import FrozenClip

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
FEATURES = ("image_tokens", "image_embed", "text_embed")
PREFIX = "clip_"
# the batch keys: clip_image_tokens [b, T, D], clip_image_embed [b, D], clip_text_embed [b, D]
BATCH_KEYS = tuple(PREFIX + name for name in FEATURES)
IMAGE_TOKENS, IMAGE_EMBED, TEXT_EMBED = BATCH_KEYS
CacheStatus = Literal["hit", "miss", "stale"]


class CacheError(DatasetError):
    """The CLIP feature cache is missing, inconsistent, or lacks an image id."""


def clip_cache_id(model_name: str, pretrained: str | None) -> str:
    """``<model>-<sha256[:12]>`` of the checkpoint file (of the tag string for an open_clip tag),
    ``<model>-random`` for random weights, which are not seeded: never share such a cache outside a test.
    Computed without loading CLIP, so every DDP rank finds the cache that rank 0 built."""
    import open_clip

    from ..models.clip import MissingWeightsError

    if pretrained is None:
        return f"{model_name}-random"
    if open_clip.get_pretrained_cfg(model_name, pretrained):  # a tag, as load_clip resolves it
        return f"{model_name}-{hashlib.sha256(pretrained.encode()).hexdigest()[:12]}"
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"CLIP checkpoint {path} does not exist (clip_pretrained of {model_name})")
    return f"{model_name}-{weights_sha256(path)[:12]}"


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file, once per process while its size and modification time stay the same: a
    stage asks for its CLIP cache's id in ``prepare_data`` and again in ``setup`` (ViT-B-32's 600 MB took
    1-2 s each time)."""
    stat = Path(path).stat()
    return _sha256_of(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: part of the cache key
    return sha256_file(path)


def cache_path(data_dir: str | Path, cache_id: str) -> Path:
    return Path(data_dir) / "features" / cache_id


def _wanted(manifest: Manifest, splits: Sequence[str]) -> list[str]:
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected a subset of {SPLITS}")
    return [s for s in splits if s in manifest.splits]


def cache_status(data_dir: str | Path, cache_id: str, splits: Sequence[str] = SPLITS) -> CacheStatus:
    """``hit``: usable; ``miss``: absent or lacks a wanted split; ``stale``: the manifest changed since the
    build (or an older cache format). The caller rebuilds on anything but ``hit``."""
    meta_path = cache_path(data_dir, cache_id) / "meta.json"
    if not meta_path.exists():
        return "miss"
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != CACHE_FORMAT or meta.get("manifest_sha256") != sha256_file(
        Path(data_dir) / MANIFEST_NAME
    ):
        return "stale"
    missing = set(_wanted(Manifest.load(data_dir), splits)) - set(meta["splits"])
    return "miss" if missing else "hit"


def _samples(data_dir: Path, manifest: Manifest, split: str) -> Iterator[tuple[int, dict]]:
    """(image id, raw sample) over every subject's shards of a split."""
    paths = [data_dir / shard.path for shard in manifest.shards(split)]
    for raw in iter_raw_samples(paths):
        meta = decode_json(raw[META_KEY], raw["__key__"], META_KEY)
        if not isinstance(meta, dict) or not isinstance(meta.get("image_id"), int):
            raise CacheError(f"{raw['__key__']}: meta.json has no integer image_id")
        yield meta["image_id"], raw


def _image_bytes(raw: dict) -> bytes:
    key = next((k for k in IMAGE_KEYS if k in raw), None)
    if key is None:
        raise CacheError(f"{raw['__key__']}: no image ({' or '.join(IMAGE_KEYS)})")
    return raw[key]


def _distinct_ids(data_dir: Path, manifest: Manifest, split: str) -> np.ndarray:
    """Sorted distinct image ids of a split; a repeated id must name the same image and captions."""
    digests: dict[int, bytes] = {}
    for image_id, raw in _samples(data_dir, manifest, split):
        digest = hashlib.blake2b(_image_bytes(raw) + raw.get(CAPTIONS_KEY, b"")).digest()
        if digests.setdefault(image_id, digest) != digest:
            raise CacheError(
                f"{raw['__key__']}: image id {image_id} carries a different image or captions than an "
                f"earlier sample of split {split}; features are cached per image id"
            )
    return np.array(sorted(digests), np.int64)


@torch.no_grad()
def _write_split(
    out: Path,
    data_dir: Path,
    manifest: Manifest,
    split: str,
    clip: FrozenClip,
    batch_size: int,
    progress: bool,
) -> int:
    ids = _distinct_ids(data_dir, manifest, split)  # pass 1: cheap, sizes the memmaps
    out.mkdir(parents=True)
    np.save(out / "image_ids.npy", ids)
    n, t, d = len(ids), clip.num_tokens, clip.embed_dim
    shapes = {"image_tokens": (n, t, d), "image_embed": (n, d), "text_embed": (n, d)}
    arrays = {k: np.lib.format.open_memmap(out / f"{k}.npy", "w+", np.float16, s) for k, s in shapes.items()}
    device = clip.mean.device
    done = np.zeros(n, bool)
    pending: list[tuple[int, torch.Tensor, list[str]]] = []
    bar = tqdm(total=n, desc=f"CLIP features {split}", unit="img", disable=not progress)

    def flush() -> None:
        rows = np.array([row for row, _, _ in pending])
        images = torch.stack([image for _, image, _ in pending]).to(device).float().div_(255)
        tokens = clip.image_tokens(images).float()  # b t d
        arrays["image_tokens"][rows] = tokens.cpu().numpy()
        arrays["image_embed"][rows] = F.normalize(tokens[:, 0], dim=-1).cpu().numpy()
        arrays["text_embed"][rows] = clip.text_embed([caps for _, _, caps in pending]).float().cpu().numpy()
        bar.update(len(pending))
        pending.clear()

    for image_id, raw in _samples(data_dir, manifest, split):  # pass 2: each image once
        row = int(np.searchsorted(ids, image_id))
        if row == n or ids[row] != image_id:
            raise CacheError(f"split {split}: the shards changed while the cache was being built; rebuild it")
        if done[row]:
            continue
        done[row] = True
        key = raw["__key__"]
        image = image_to_uint8_chw(decode_image(_image_bytes(raw), key), manifest.image_size)
        captions = validate_captions(decode_json(raw[CAPTIONS_KEY], key, CAPTIONS_KEY), key)
        pending.append((row, image, captions))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    bar.close()
    for array in arrays.values():
        array.flush()
    if not done.all():
        raise CacheError(f"split {split}: the shards changed while the cache was being built; rebuild it")
    return n


def build_clip_cache(
    data_dir: str | Path,
    clip: FrozenClip,
    cache_id: str,
    splits: Sequence[str] = SPLITS,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """Compute and write the cache for the manifest's ``splits`` (moves ``clip`` to ``device``).

    ``data_dir`` must be a local dataset: the features are written next to its shards.
    Written into a temporary directory that is renamed into place
    (:func:`~lightning_fcae.files.atomic.atomic_folder`), so an interrupted build never leaves a cache that
    reads as complete; an existing cache of the same id is replaced.
    """
    data_dir = Path(data_dir)
    manifest = Manifest.load(data_dir)
    manifest_sha = sha256_file(data_dir / MANIFEST_NAME)
    final = cache_path(data_dir, cache_id)
    clip.to(device)
    with atomic_folder(final) as tmp:  # a killed build leaves the old cache (or none), never half of one
        counts = {
            split: _write_split(tmp / split, data_dir, manifest, split, clip, batch_size, progress)
            for split in _wanted(manifest, splits)
        }
        meta = {
            "format": CACHE_FORMAT,
            "model_name": clip.model_name,
            "pretrained": clip.pretrained,
            "weights_sha256": weights_sha256(clip.checkpoint) if clip.checkpoint is not None else None,
            "manifest_sha256": manifest_sha,
            "num_tokens": clip.num_tokens,
            "embed_dim": clip.embed_dim,
            "dtype": "float16",
            "splits": counts,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "lightning_fcae": __version__,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    log.info("CLIP feature cache %s: %s", final, counts)
    return final


def ensure_clip_cache(
    data_dir: str | Path,
    model_name: str,
    pretrained: str | None,
    splits: Sequence[str] = SPLITS,
    **build_kwargs,
) -> Path:
    """The cache directory of this CLIP (id :func:`clip_cache_id`): reused on a hit (CLIP is not even
    loaded), built on a miss or when stale. Call it on one process (``prepare_data``); workers only read."""
    cache_id = clip_cache_id(model_name, pretrained)
    status = cache_status(data_dir, cache_id, splits)
    if status == "hit":
        return cache_path(data_dir, cache_id)
    log.info("CLIP feature cache %s is %s: building it", cache_id, status)
    from ..models.clip import load_clip

    return build_clip_cache(data_dir, load_clip(model_name, pretrained), cache_id, splits, **build_kwargs)


class ClipFeatureLookup:
    """``lookup(image_id) -> {prefix + name: float32 tensor}`` with ``image_tokens [T, D]``,
    ``image_embed [D]`` and ``text_embed [D]``.

    Picklable: the memmaps open lazily in the process that first calls it (each DataLoader worker), so
    nothing file-backed crosses a pickle. ``prefix`` names the keys: with the default :data:`PREFIX` a
    sample decoder's ``sample.update(lookup(meta["image_id"]))`` gives the :data:`BATCH_KEYS`.
    """

    def __init__(self, cache_dir: str | Path, prefix: str = PREFIX):
        self.cache_dir, self.prefix = Path(cache_dir), prefix
        meta_path = self.cache_dir / "meta.json"
        if not meta_path.exists():
            raise CacheError(f"{self.cache_dir} is not a CLIP feature cache (no meta.json); build it first")
        self.meta = json.loads(meta_path.read_text())
        self._splits: list[tuple[np.ndarray, dict[str, np.ndarray]]] | None = None

    @property
    def num_tokens(self) -> int:
        return self.meta["num_tokens"]

    @property
    def embed_dim(self) -> int:
        return self.meta["embed_dim"]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_splits": None}

    def _open(self) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        splits = []
        for split in self.meta["splits"]:
            folder = self.cache_dir / split
            arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in FEATURES}
            splits.append((np.load(folder / "image_ids.npy"), arrays))
        return splits

    def __call__(self, image_id: int) -> dict[str, torch.Tensor]:
        if self._splits is None:
            self._splits = self._open()
        for ids, arrays in self._splits:
            row = int(np.searchsorted(ids, image_id))
            if row < len(ids) and ids[row] == image_id:
                return {
                    self.prefix + name: torch.from_numpy(array[row].astype(np.float32))
                    for name, array in arrays.items()
                }
        raise CacheError(
            f"image id {image_id} is not in the CLIP feature cache {self.cache_dir} "
            f"(splits {list(self.meta['splits'])}); was it built for another dataset? Rebuild it."
        )


def train_means(cache_dir: str | Path, chunk: int = 1024) -> dict[str, torch.Tensor]:
    """Mean CLIP image tokens ``[T, D]``, image embedding ``[D]`` and caption embedding ``[D]`` over the
    cached training images.

    Stage 2 subtracts them from its targets: raw CLIP features share a large component across images
    (mean pairwise cosine ~0.9 for a random-init CLIP, ~0.5 for trained ones), and a cosine loss on raw
    features is satisfied by predicting that shared part. Captions are centred by their own mean: image
    and text embeddings sit in separate cones of CLIP's space (the modality gap), and it is their
    centred parts that correspond.
    """
    folder = Path(cache_dir) / "train"
    if not folder.exists():
        raise CacheError(f"{cache_dir} has no train split: the target means come from training images")
    means = {}
    for name in ("image_tokens", "image_embed", "text_embed"):
        array = np.load(folder / f"{name}.npy", mmap_mode="r")
        total = np.zeros(array.shape[1:], np.float64)
        for start in range(0, len(array), chunk):
            total += array[start : start + chunk].astype(np.float64).sum(0)
        means[name] = torch.from_numpy((total / len(array)).astype(np.float32))
    return means


def batch_clip_features(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(image tokens ``[b, T, D]``, image embedding ``[b, D]``, mean caption embedding ``[b, D]``) of a
    batch that carries them (:data:`BATCH_KEYS`), else None."""
    if all(key in batch for key in BATCH_KEYS):
        return tuple(batch[key] for key in BATCH_KEYS)
    return None


def _local_data_dir(trainer) -> str | None:
    """The trainer's dataset folder (None without a DataModule); the cache is written beside its shards."""
    from ..data.datamodule import NSDDataModule, is_local

    data = trainer.datamodule
    if data is None:
        return None
    if not isinstance(data, NSDDataModule):
        raise TypeError(
            f"CLIP features stream through NSDDataModule, the trainer's DataModule is a {type(data).__name__}: "
            f"use NSDDataModule, or give batches that carry {', '.join(BATCH_KEYS)}"
        )
    if not is_local(data.data_dir):
        raise NotImplementedError(f"the CLIP feature cache needs a local dataset, not {data.data_dir}")
    return data.data_dir


def prepare_clip_features(trainer, model_name: str, pretrained: str | None) -> None:
    """For a stage's ``prepare_data`` (one process per node): build the trainer's dataset's cache for
    this CLIP when it is missing or stale, on the GPU when there is one."""
    data_dir = _local_data_dir(trainer)
    if data_dir is not None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        ensure_clip_cache(data_dir, model_name, pretrained, device=device)


def stream_clip_features(trainer, model_name: str, pretrained: str | None) -> Path | None:
    """For a stage's ``setup`` (every process): hand the trainer's DataModule the lookup of this CLIP's
    cached features, so every batch it makes carries :data:`BATCH_KEYS`. Returns the cache directory
    (None without a DataModule)."""
    data_dir = _local_data_dir(trainer)
    if data_dir is None:
        return None
    cache = cache_path(data_dir, clip_cache_id(model_name, pretrained))
    trainer.datamodule.stream_image_features(ClipFeatureLookup(cache))
    return cache
