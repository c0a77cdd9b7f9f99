"""The NSD release's source files: where they lie, and readers that name a missing or damaged file.

Paths are relative to the NSD root as laid out on the NSD bucket (see :mod:`lightning_fcae.data.nsd`);
COCO's ``captions_*`` / ``instances_*`` JSON come from ``coco_dir``. The converter reads everything
through here, so a partial download fails with the file's name and the fix, before hours of work.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import scipy.io

from .schema import DatasetError, DatasetNotFoundError, SourceFileError, subject_name

TRIALS_PER_SESSION = 750  # fixed by the NSD design; maps a session's rows onto masterordering
BETA_TYPE = "betas_fithrf_GLMdenoise_RR"
SPACE = "func1pt8mm"
EXPDESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIM_INFO = "nsddata/experiments/nsd/nsd_stim_info_merged.csv"
STIMULI = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
_SESSION_FILE = re.compile(r"betas_session(\d{2})\.hdf5")


def roi_path(root: Path, subject: int) -> Path:
    return root / "nsddata/ppdata" / subject_name(subject) / SPACE / "roi/nsdgeneral.nii.gz"


def betas_path(root: Path, subject: int, session: int) -> Path:
    directory = root / "nsddata_betas/ppdata" / subject_name(subject) / SPACE / BETA_TYPE
    return directory / f"betas_session{session:02d}.hdf5"


def require_source(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetNotFoundError(
            f"{path} is missing ({what}); is the NSD root right and the download complete?"
        )
    return path


def open_h5(path: Path, redo: str) -> h5py.File:
    """Open an NSD HDF5 file; h5py's error for a partly downloaded one names no file, so name it and the fix."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise SourceFileError(f"{path} cannot be read ({exc}); is it partly downloaded? {redo}") from exc


def find_sessions(root: Path, subject: int) -> list[int]:
    """Session numbers present on disk: users often download only some of the 30-40 sessions."""
    directory = betas_path(root, subject, 1).parent
    found = sorted(
        int(m[1]) for p in directory.glob("betas_session*.hdf5") if (m := _SESSION_FILE.fullmatch(p.name))
    )
    if not found:
        raise DatasetNotFoundError(
            f"{betas_path(root, subject, 1)} is missing, and so is every other session of {subject_name(subject)}"
        )
    return found


class Design:
    """nsd_expdesign.mat converted to 0-based indices, so nothing downstream repeats the MATLAB -1."""

    def __init__(self, path: Path):
        mat = scipy.io.loadmat(path)
        try:
            # [30000] subjectim column per trial
            self.masterordering = mat["masterordering"].ravel().astype(np.int64) - 1
            self.subjectim = mat["subjectim"].astype(np.int64) - 1  # [8, 10000] nsd id
            self.shared = mat["sharedix"].ravel().astype(np.int64) - 1  # [1000] nsd id
        except KeyError as exc:
            raise DatasetError(f"{path}: no variable {exc}; not an NSD experiment design") from exc

    def session_images(self, subject: int, session: int) -> np.ndarray:
        """[750] nsd ids shown in the session's trials, in order."""
        start = (session - 1) * TRIALS_PER_SESSION
        if start + TRIALS_PER_SESSION > len(self.masterordering):
            raise DatasetError(
                f"session {session} lies beyond the design's {len(self.masterordering)} trials"
            )
        return self.subjectim[subject - 1, self.masterordering[start : start + TRIALS_PER_SESSION]]


def load_stim_info(path: Path) -> dict[int, tuple[int, str]]:
    """nsdId -> (cocoId, cocoSplit)."""
    with open(path, newline="") as handle:
        return {int(row["nsdId"]): (int(row["cocoId"]), row["cocoSplit"]) for row in csv.DictReader(handle)}


def load_roi(path: Path) -> tuple[np.ndarray, tuple[int, int, int]]:
    """ROI voxel coordinates [V, 3] as (x, y, z) in C-order, and the volume shape (X, Y, Z)."""
    roi = np.asarray(nib.load(path).dataobj)
    return np.argwhere(roi > 0), roi.shape


def load_captions(coco_dir: Path, coco_splits: set[str]) -> dict[int, list[str]]:
    """cocoId -> first 3 non-empty captions by annotation id (stable across COCO copies)."""
    by_image: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for split in sorted(coco_splits):
        path = require_source(coco_dir / f"captions_{split}.json", "COCO captions")
        for ann in json.loads(path.read_text())["annotations"]:
            if text := ann["caption"].strip():
                by_image[int(ann["image_id"])].append((int(ann["id"]), text))
    return {coco_id: [text for _, text in sorted(anns)[:3]] for coco_id, anns in by_image.items()}


def load_labels(coco_dir: Path, coco_splits: set[str]) -> dict[int, dict[str, int]]:
    """cocoId -> {category name: instance count}, only when every needed instances file is present."""
    paths = [coco_dir / f"instances_{split}.json" for split in sorted(coco_splits)]
    if not all(p.exists() for p in paths):
        return {}
    labels: dict[int, Counter] = defaultdict(Counter)
    for path in paths:
        data = json.loads(path.read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        for ann in data["annotations"]:
            labels[int(ann["image_id"])][names[ann["category_id"]]] += 1
    return {coco_id: dict(counts) for coco_id, counts in labels.items()}
