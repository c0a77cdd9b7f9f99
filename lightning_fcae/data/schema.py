"""The on-disk contract shared by every dataset: shard keys, the manifest, and named errors.

One format serves synthetic and real data, so every later stage can be judged on either. A dataset
directory holds webdataset tar shards (one sample per subject x image), a ``manifest.json`` that
describes them, and ``norm_stats.npz`` with per-voxel training mean/std for each subject.

Sample keys inside a shard (the webdataset ``__key__`` is e.g. ``subj01_nsd012345``):

- ``fmri.npy``      float16 ``[repeats, voxels]`` (repeats = 1 where a trial was not repeated)
- ``image.png``     RGB stimulus (``image.jpg`` is accepted too)
- ``captions.json`` list of 1-3 non-empty strings
- ``meta.json``     subject, image_id, coco_id (or null), split, labels (dict of ints, may be empty)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
NORM_STATS_NAME = "norm_stats.npz"
SPLITS = ("train", "val", "test")
FMRI_KEY = "fmri.npy"
IMAGE_KEYS = ("image.png", "image.jpg")
CAPTIONS_KEY = "captions.json"
META_KEY = "meta.json"
_SAMPLE_KEY = re.compile(r"^subj\d{2}_[a-z]+\d+$")


class DatasetError(Exception):
    """Base class for every problem with a dataset on disk; the message names the file or key."""


class DatasetNotFoundError(DatasetError):
    """The dataset directory or manifest does not exist."""


class ManifestError(DatasetError):
    """The manifest is malformed or disagrees with the shards it describes."""


class NormStatsError(ManifestError):
    """``norm_stats.npz`` does not match the manifest's hash or holds unusable values (NaN, std <= 0)."""


class ShardIntegrityError(DatasetError):
    """A shard is truncated, unreadable, or does not match its recorded size/hash."""


class SampleError(DatasetError):
    """One sample inside a shard is invalid (wrong voxel count, NaN, undecodable image, ...)."""


class SampleKeyError(SampleError):
    """A sample key outside the format (``subj01_nsd012345``): keys become file names and cache lookups,
    so one such as ``../../x`` must never be read as data."""


class ShardCountError(DatasetError):
    """Too few shards to give every rank x worker at least one (webdataset would hang or starve)."""


class SourceFileError(DatasetError):
    """A file a converter reads (e.g. an NSD betas session) is truncated or unreadable: download it again."""


class DatasetArgumentError(DatasetError, ValueError):
    """An option of a dataset command is out of range (e.g. ``data check --n-way 0``).

    A DatasetError, so ``lightning-fcae data`` prints it as a one-line error like the others, and a
    ValueError, so Python callers catch it as the bad argument it is.
    """


def check_arguments(
    checks: Iterable[tuple[str, object, bool, str]],
    error: type[Exception] = DatasetArgumentError,
    label: Callable[[str], str] = str,
) -> None:
    """Raise ``error("<label(name)> must be <rule>, got <value>")`` for the first ``(name, value, ok,
    rule)`` whose ``ok`` is false: every command checks its arguments up front in the same words."""
    for name, value, ok, rule in checks:
        if not ok:
            raise error(f"{label(name)} must be {rule}, got {value!r}")


def sample_key(subject: str, image_id: int, prefix: str = "nsd") -> str:
    """``subj01_nsd012345``: underscores only, because webdataset splits keys at dots."""
    key = f"{subject}_{prefix}{image_id:06d}"
    if not _SAMPLE_KEY.match(key):
        raise ValueError(f"invalid sample key {key!r}: subject must look like 'subj01'")
    return key


def check_sample_key(key: object, where: str) -> str:
    """``key`` if it has the format :func:`sample_key` writes, else a :class:`SampleKeyError` naming ``where``."""
    if not isinstance(key, str) or not _SAMPLE_KEY.match(key):
        raise SampleKeyError(
            f"{where}: sample key {key!r} is not of the form subj01_nsd012345; keys become file names, so "
            "this shard is refused (rewrite it with `lightning-fcae data synth` / `data nsd`)"
        )
    return key


def subject_name(number: int) -> str:
    return f"subj{number:02d}"


@dataclass
class ShardInfo:
    """One tar file: path relative to the dataset root, and what is needed to verify it."""

    path: str
    subject: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class SplitInfo:
    shards: list[ShardInfo] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


@dataclass
class Manifest:
    """Everything a reader needs to know about a dataset without opening a shard."""

    name: str
    subjects: dict[str, int]  # subject -> voxel count
    splits: dict[str, SplitInfo]
    source: dict  # generator or converter name, version and parameters
    image_size: int
    norm_stats: str = NORM_STATS_NAME
    norm_stats_sha256: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        for name, split in self.splits.items():
            data["splits"][name]["samples"] = split.samples
        return json.dumps(data, indent=2)

    def save(self, root: str | Path) -> Path:
        path = Path(root) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)  # atomic: a crash never leaves a half-written manifest
        return path

    @classmethod
    def from_dict(cls, data: dict, origin: str = "manifest") -> Manifest:
        try:
            if data.get("format_version") != FORMAT_VERSION:
                raise ManifestError(
                    f"{origin}: format_version {data.get('format_version')!r}, this lightning-fcae reads "
                    f"{FORMAT_VERSION}; regenerate the dataset"
                )
            splits = {
                name: SplitInfo([ShardInfo(**s) for s in split["shards"]])
                for name, split in data["splits"].items()
            }
            unknown = set(splits) - set(SPLITS)
            if unknown:
                raise ManifestError(f"{origin}: unknown split(s) {sorted(unknown)}; expected {SPLITS}")
            for split in splits.values():
                for shard in split.shards:
                    if shard.subject not in data["subjects"]:
                        raise ManifestError(
                            f"{origin}: shard {shard.path} names unknown subject {shard.subject}"
                        )
            return cls(
                name=data["name"],
                subjects={k: int(v) for k, v in data["subjects"].items()},
                splits=splits,
                source=data.get("source", {}),
                image_size=int(data["image_size"]),
                norm_stats=data.get("norm_stats", NORM_STATS_NAME),
                norm_stats_sha256=data.get("norm_stats_sha256", ""),
                format_version=data["format_version"],
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"{origin}: missing or malformed field {exc}") from exc

    @classmethod
    def load(cls, root: str | Path) -> Manifest:
        root = Path(root)
        # both cases name the fix, as docs/data.md promises: how to create a dataset at this path
        create = (
            f"Create the synthetic benchmark with `lightning-fcae data synth --profile tiny --out {root}` "
            f"or convert NSD with `lightning-fcae data nsd --root NSD_DIR --coco COCO_DIR --out {root}`"
        )
        if not root.exists():
            raise DatasetNotFoundError(f"dataset directory {root} does not exist. {create}")
        path = root / MANIFEST_NAME
        if not path.exists():
            raise DatasetNotFoundError(
                f"{path} is missing: {root} is not a lightning-fcae dataset (an interrupted write leaves "
                f"shards but no manifest). {create}"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, origin=str(path))

    def shards(self, split: str, subjects: list[str] | None = None) -> list[ShardInfo]:
        if split not in self.splits:
            raise ManifestError(f"dataset {self.name!r} has no split {split!r}; it has {sorted(self.splits)}")
        wanted = self.subjects if subjects is None else subjects
        missing = [s for s in wanted if s not in self.subjects]
        if missing:
            raise ManifestError(
                f"dataset {self.name!r} has no subject(s) {missing}; it has {sorted(self.subjects)}"
            )
        return [s for s in self.splits[split].shards if s.subject in wanted]
