"""A tiny fake NSD release in the real on-disk layout, for converter tests.

Layouts, dtypes, axis orders and 1-based MATLAB conventions match the real release; only sizes shrink
(volume ``vol`` = (X, Y, Z), 16x16 images, fewer subjectim columns). Sessions keep the real 750 trials
so the session -> masterordering mapping is exercised exactly as on real data.

The betas encode the shown image: in ROI voxel (x, y, z) of a trial showing image n,
``raw = gain[x, y, z] * image_code(n) + offset[session, x, y, z]``, so after the per-voxel, per-session
z-score every ROI voxel of that trial equals ``(code - mean) / std`` over the session's codes
(``expected_zscore``). Voxels outside the ROI hold noise, so selecting a wrong voxel shows up.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import scipy.io

TRIALS = 750
DESIGN_TRIALS = 30000
IMAGE_SIDE = 16
N_SUBJECTS = 8  # subjectim always has a row per NSD subject
SPACE = "func1pt8mm"
BETAS = "betas_fithrf_GLMdenoise_RR"


def image_code(nsd_id: int | np.ndarray) -> np.ndarray:
    return np.asarray(nsd_id) % 101


def fake_image(nsd_id: int) -> np.ndarray:
    """[16, 16, 3] uint8 whose first pixel spells the nsd id, so a test can tell which image landed."""
    image = np.zeros((IMAGE_SIDE, IMAGE_SIDE, 3), np.uint8)
    image[..., 0] = nsd_id % 256
    image[..., 1] = nsd_id // 256
    image[..., 2] = np.arange(IMAGE_SIDE, dtype=np.uint8)[:, None] * 16
    return image


def expected_zscore(session_images: np.ndarray, nsd_id: int) -> float:
    codes = image_code(session_images).astype(np.float64)
    return float((image_code(nsd_id) - codes.mean()) / codes.std())


def _session_numbers(subjects, sessions) -> dict[int, list[int]]:
    if not isinstance(sessions, dict):
        sessions = dict.fromkeys(subjects, sessions)
    return {s: list(range(1, n + 1)) if isinstance(n, int) else sorted(n) for s, n in sessions.items()}


def _write_design(root: Path, rng, columns: int, n_shared: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """masterordering / subjectim / sharedix like NSD: each column shown 3 times, shared columns first."""
    n_images = n_shared + N_SUBJECTS * (columns - n_shared)
    ids = rng.permutation(n_images)  # 0-based nsd ids
    shared = np.sort(ids[:n_shared])
    subjectim = np.empty((N_SUBJECTS, columns), np.int64)
    subjectim[:, :n_shared] = shared
    subjectim[:, n_shared:] = ids[n_shared:].reshape(N_SUBJECTS, -1)
    blocks = -(-DESIGN_TRIALS // (3 * columns))
    order = np.concatenate([rng.permutation(np.repeat(np.arange(columns), 3)) for _ in range(blocks)])
    order = order[:DESIGN_TRIALS]
    path = root / "nsddata/experiments/nsd/nsd_expdesign.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        path,
        {
            "masterordering": (order + 1)[None].astype(np.float64),  # 1 x 30000, 1-based column
            "subjectim": (subjectim + 1).astype(np.float64),  # 8 x columns, 1-based nsd id
            "sharedix": (shared + 1)[None].astype(np.float64),  # 1 x n_shared, 1-based nsd id
        },
    )
    return order, subjectim, shared


def _write_stimuli(
    root: Path, rng, n_images: int, shared: np.ndarray, subjectim
) -> dict[int, tuple[int, str]]:
    coco = rng.choice(np.arange(1, 600000), n_images, replace=False)
    splits = rng.choice(["train2017", "val2017"], n_images)
    path = root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle["imgBrick"] = np.stack([fake_image(n) for n in range(n_images)])  # [n, 16, 16, 3] uint8
    seen = [{int(n) for n in row} for row in subjectim]
    header = ["", "cocoId", "cocoSplit", "cropBox", "loss", "nsdId", "flagged", "BOLD5000", "shared1000"]
    with open(root / "nsddata/experiments/nsd/nsd_stim_info_merged.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header + [f"subject{i}" for i in range(1, N_SUBJECTS + 1)])
        for n in range(n_images):
            flags = [int(n in s) for s in seen]
            row = [n, coco[n], splits[n], "(0, 0, 0.1, 0.1)", 0.0, n, False, False, n in set(shared)]
            writer.writerow(row + flags)
    return {n: (int(coco[n]), str(splits[n])) for n in range(n_images)}


def _write_subject(root, rng, subject, sessions, vol, order, subjectim) -> tuple[np.ndarray, dict]:
    """ROI (X, Y, Z) with NSD's -1/0/1 values, and betas [750, Z, Y, X] int16 per session."""
    name = f"subj{subject:02d}"
    roi = rng.choice(np.array([-1, 0, 1], np.int16), size=vol, p=[0.3, 0.2, 0.5])
    roi_file = root / "nsddata/ppdata" / name / SPACE / "roi/nsdgeneral.nii.gz"
    roi_file.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(roi, np.eye(4)), roi_file)
    gain = rng.integers(1, 4, size=vol)
    session_images = {}
    for session in sessions:
        images = subjectim[subject - 1, order[(session - 1) * TRIALS : session * TRIALS]]  # [750] nsd ids
        session_images[session] = images
        raw = gain * image_code(images)[:, None, None, None] + rng.integers(
            -50, 50, size=vol
        )  # [750, X, Y, Z]
        raw = np.where(roi > 0, raw, rng.integers(-3000, 3000, size=raw.shape))
        path = root / "nsddata_betas/ppdata" / name / SPACE / BETAS / f"betas_session{session:02d}.hdf5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as handle:
            handle["betas"] = raw.transpose(0, 3, 2, 1).astype(np.int16)  # MATLAB (X,Y,Z,750) seen by h5py
    return roi > 0, session_images


def _write_coco(coco_dir: Path, rng, coco: dict[int, tuple[int, str]], with_instances: bool) -> dict:
    """5 captions per image with shuffled annotation ids and stray whitespace; returns expected first 3."""
    coco_dir.mkdir(parents=True, exist_ok=True)
    files = {
        split: {"annotations": [], "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
        for split in ("train2017", "val2017")
    }
    expected, instances = {}, {split: [] for split in files}
    next_id = 0
    for n, (coco_id, split) in coco.items():
        ann_ids = next_id + rng.permutation(5)
        next_id += 5
        texts = [f"  image {n} caption {int(i)}\n" for i in ann_ids]
        files[split]["annotations"] += [
            {"image_id": coco_id, "id": int(i), "caption": t} for i, t in zip(ann_ids, texts, strict=True)
        ]
        expected[n] = [t.strip() for _, t in sorted(zip(ann_ids, texts, strict=True))[:3]]
        instances[split] += [
            {"image_id": coco_id, "category_id": 1 + n % 2, "id": next_id + k} for k in (0, 1)
        ]
    for split, data in files.items():
        (coco_dir / f"captions_{split}.json").write_text(json.dumps({"annotations": data["annotations"]}))
        if with_instances:
            payload = {"annotations": instances[split], "categories": data["categories"]}
            (coco_dir / f"instances_{split}.json").write_text(json.dumps(payload))
    return expected


def write_fake_nsd(
    root,
    subjects=(1, 2),
    sessions=2,
    vol=(6, 5, 4),
    images_per_subject: int | None = None,
    n_shared: int | None = None,
    coco_dir=None,
    with_instances: bool = False,
    seed: int = 0,
) -> dict:
    """Write the fake release under ``root`` (and COCO annotations under ``coco_dir``); return ground truth.

    ``sessions`` is a count for every subject or a dict subject -> count or list of session numbers.
    ``images_per_subject`` defaults to 250 per session so every image is shown 3 times, as in NSD.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    numbers = _session_numbers(subjects, sessions)
    columns = images_per_subject or TRIALS * max(max(v) for v in numbers.values()) // 3
    n_shared = n_shared or columns // 10
    order, subjectim, shared = _write_design(root, rng, columns, n_shared)
    n_images = n_shared + N_SUBJECTS * (columns - n_shared)
    coco = _write_stimuli(root, rng, n_images, shared, subjectim)
    info = {
        "root": root,
        "sessions": numbers,
        "shared": set(shared.tolist()),
        "coco": coco,
        "roi": {},
        "trials": {},
    }
    for subject, found in numbers.items():
        info["roi"][subject], info["trials"][subject] = _write_subject(
            root, rng, subject, found, vol, order, subjectim
        )
    if coco_dir is not None:
        info["coco_dir"] = Path(coco_dir)
        info["captions"] = _write_coco(Path(coco_dir), rng, coco, with_instances)
    return info
