"""Shipped stand-in weights: their folder layout, their manifest of hashes, and the check on every load.

A stand-ins folder (``stand-ins/synthetic-small`` in the repository) holds::

    manifest.json            dataset it was trained on, CLIP architecture, sha256 of every file below
    clip/<arch>.safetensors  the CLIP stand-in (open_clip state dict)       + CARD.md, run.yaml
    ldm/vqvae, unet, scheduler, condition   the LDM stand-in (diffusers)    + CARD.md, run*.yaml in ldm/
    classifier/              the judge of the checks (diffusers model)     + CARD.md, run.yaml
    checks.json              the figures of ``lightning-fcae stand-ins check``

Weights are stored in float16 (they train in float32; the checks are computed on what is shipped).
:func:`load_stand_ins` is the only way in: it refuses a folder whose files are missing or whose hashes
differ from the manifest (:class:`StandInError`, saying how to regenerate), and a dataset other than the
one the stand-ins were trained on (their training images could be that dataset's test images).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.schema import Manifest
from ..files.hashing import sha256_file

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
REGENERATE = (
    "restore the shipped files with `git checkout -- {root}`, or retrain them with `make stand-ins` "
    "(about 2.5 hours on 2 CPU cores)"
)


class StandInError(FileNotFoundError):
    """A stand-ins folder that cannot be used: missing or altered files, or another dataset."""


@dataclass(frozen=True)
class StandIns:
    """Paths of a verified stand-ins folder."""

    root: Path
    clip_model: str  # open_clip architecture name
    clip_weights: Path
    ldm: Path  # diffusers LDM directory (vqvae/, unet/, scheduler/, condition/)
    classifier: Path
    dataset: dict  # name and generator source of the dataset they were trained on


def dataset_identity(manifest: Manifest | dict) -> dict:
    """What makes two synthetic datasets the same images: name and generator settings (seed, version,
    profile). Shard hashes are left out: PNG bytes may differ between machines for identical scenes."""
    data = manifest if isinstance(manifest, dict) else {"name": manifest.name, "source": manifest.source}
    source = {k: v for k, v in (data.get("source") or {}).items() if k != "lightning_fcae"}
    return {"name": data["name"], "source": source}


def hash_files(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative POSIX paths), the manifest itself excluded."""
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST and "__pycache__" not in path.parts
    }


def write_manifest(root: Path, clip_model: str, dataset: dict, extra: dict | None = None) -> Path:
    """Record the hashes of everything now in ``root``; call it last, after cards and checks are written."""
    content = {
        "format_version": MANIFEST_VERSION,
        "dataset": dataset,
        "clip_model": clip_model,
        "clip_weights": f"clip/{clip_model}.safetensors",
        "ldm": "ldm",
        "classifier": "classifier",
        **(extra or {}),
        "files": hash_files(root),
    }
    path = root / MANIFEST
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


def load_stand_ins(root: str | Path, data_dir: str | Path | None = None) -> StandIns:
    """Verify a stand-ins folder (every file present, every sha256 as recorded) and, with ``data_dir``,
    that it was trained on that dataset. Raises :class:`StandInError` naming the first problem."""
    root = Path(root)
    fix = REGENERATE.format(root=root)
    path = root / MANIFEST
    if not path.is_file():
        raise StandInError(f"{root} is not a stand-ins folder: no {MANIFEST}; {fix}")
    try:
        content = json.loads(path.read_text())
        files = content["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise StandInError(f"{path} is damaged ({exc}); {fix}") from exc
    for name, expected in files.items():
        file = root / name
        if not file.is_file():
            raise StandInError(f"stand-in file {file} is missing; {fix}")
        if sha256_file(file) != expected:
            raise StandInError(f"stand-in file {file} does not match its sha256 in {path} (altered?); {fix}")
    stand_ins = StandIns(
        root=root,
        clip_model=content["clip_model"],
        clip_weights=root / content["clip_weights"],
        ldm=root / content["ldm"],
        classifier=root / content["classifier"],
        dataset=content["dataset"],
    )
    if data_dir is not None:
        data = dataset_identity(Manifest.load(data_dir))
        if data != stand_ins.dataset:
            raise StandInError(
                f"the stand-ins in {root} were trained on {_describe(stand_ins.dataset)}, the data at {data_dir} "
                f"is {_describe(data)}: their training images may be this dataset's test images. Train "
                "stand-ins for it (`lightning-fcae pipeline ... --train-stand-ins`)"
            )
    return stand_ins


def _describe(identity: dict) -> str:
    source = identity.get("source", {})
    profile = (source.get("profile") or {}).get("name", "?")
    return f"{identity['name']} (profile {profile}, seed {source.get('seed', '?')})"


def half_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors in float16, contiguous (safetensors' requirement), others as they are."""
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
