"""Convert a Natural Scenes Dataset (NSD) release into lightning-fcae shards.

Reads the release as laid out on the NSD bucket (paths relative to ``root``):

- ``nsddata/experiments/nsd/nsd_expdesign.mat``          trial -> image design, 1-based MATLAB indices
- ``nsddata/experiments/nsd/nsd_stim_info_merged.csv``   nsdId (0-based) -> cocoId, cocoSplit
- ``nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5``       ``imgBrick`` [73000, 425, 425, 3] uint8
- ``nsddata/ppdata/subjXX/func1pt8mm/roi/nsdgeneral.nii.gz``  ROI volume (X, Y, Z), ROI where > 0
- ``nsddata_betas/ppdata/subjXX/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionNN.hdf5``
  ``betas`` int16 [750, Z, Y, X] = percent signal change x 300 (h5py shows MATLAB's axes reversed)

and COCO 2017 ``captions_{train,val}2017.json`` (optionally ``instances_*``) from ``coco_dir``.

Decisions (also recorded in the manifest's ``source``):

- Voxel order: C-order of the NIfTI ROI, i.e. ``np.argwhere(roi > 0)`` sorted by (x, y, z); voxel v is
  ``betas[:, z, y, x]``. The coordinates are saved as ``nsdgeneral_subjXX.npy`` [V, 3] so results can be
  painted back into the volume.
- Each voxel is z-scored over each session's trials: sessions differ in scanner drift and gain, and this
  is the normalisation NSD's own analyses use.
- Splits by image: test = shared1000 images seen by *all* converted subjects (so a test image is
  comparable across subjects); val = ``val_fraction`` of the remaining images, drawn per nsd id from
  ``seed`` (stable when more sessions or subjects are added); train = the rest. Shared images that some
  subject has not seen are dropped rather than leaked into train. Checkpoints select on val, never test.
- One sample per (subject, image): fmri [repeats, voxels], repeats in trial order (1-3 in NSD).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .nsd_sources import (
    BETA_TYPE,
    EXPDESIGN,
    SPACE,
    STIM_INFO,
    STIMULI,
    TRIALS_PER_SESSION,
    Design,
    betas_path,
    find_sessions,
    load_captions,
    load_labels,
    load_roi,
    load_stim_info,
    open_h5,
    require_source,
    roi_path,
)
from .schema import (
    MANIFEST_NAME,
    DatasetArgumentError,
    DatasetError,
    Manifest,
    check_arguments,
    subject_name,
)
from .writer import DatasetWriter

CONVERTER_VERSION = 1
NSD_IMAGES = 73000
NSD_SUBJECTS = range(1, 9)  # subj01-subj08
PLACEHOLDER_CAPTION = "an image"
CHUNK_TRIALS = 50  # ~70 MB of int16 per h5py read at 1.8 mm
VOXEL_ORDER = "nsdgeneral > 0 in NIfTI (x, y, z) C-order; voxel v = betas[:, z, y, x]"


def zscore(values: np.ndarray) -> np.ndarray:
    """Per-column z-score [trials, V]; constant voxels become 0 instead of dividing by ~0."""
    mean = values.mean(0, dtype=np.float64)
    std = values.std(0, dtype=np.float64)
    std[std < 1e-8] = 1.0
    return ((values - mean) / std).astype(np.float32)


def extract_session(path: Path, coords: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """[750, V] float32 z-scored ROI betas of one session, read in trial chunks so memory stays small."""
    x, y, z = coords.T
    redo = "Download it again (or delete it to convert without it); sessions already extracted stay cached"
    with open_h5(path, redo) as handle:
        betas = handle["betas"]  # [750, Z, Y, X] int16
        expected = (TRIALS_PER_SESSION, *shape[::-1])
        if betas.shape != expected:
            raise DatasetError(
                f"{path}: betas have shape {betas.shape}, expected {expected} to match the ROI"
            )
        chunks = [betas[i : i + CHUNK_TRIALS][:, z, y, x] for i in range(0, TRIALS_PER_SESSION, CHUNK_TRIALS)]
    return zscore(np.concatenate(chunks).astype(np.float32) / 300.0)  # int16 -> % signal change


def cache_stamp(source: Path, coords: np.ndarray) -> dict:
    """What a cached session was extracted from. Size and mtime change when a session is downloaded again
    (or comes from another root), the ROI digest when the ROI does; a shape check alone misses both. The
    path is left out so that moving or mounting the NSD tree elsewhere does not cost a re-extraction."""
    stat = source.stat()
    roi = hashlib.sha256(np.ascontiguousarray(coords, dtype=np.int64).tobytes()).hexdigest()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "roi_sha256": roi}


def _cache_matches(target: Path, stamp_path: Path, stamp: dict, voxels: int) -> bool:
    try:
        fresh = json.loads(stamp_path.read_text()) == stamp
        return fresh and np.load(target, mmap_mode="r").shape == (TRIALS_PER_SESSION, voxels)
    except (OSError, ValueError):  # missing, unreadable or from before stamps: extract again
        return False


def cached_session(cache: Path, root: Path, subject: int, session: int, roi) -> Path:
    """Extract a session once: float16 z-scored betas in ``cache``, written atomically for resuming, with
    a ``.json`` stamp of its source (:func:`cache_stamp`) so a changed source is extracted again."""
    target = cache / f"{subject_name(subject)}_session{session:02d}.npy"
    stamp_path = target.with_suffix(".json")
    coords, shape = roi
    source = betas_path(root, subject, session)
    stamp = cache_stamp(source, coords)
    if _cache_matches(target, stamp_path, stamp, len(coords)):
        return target
    stamp_path.unlink(missing_ok=True)  # an old stamp must not vouch for new data if we stop below
    data = extract_session(source, coords, shape).astype(np.float16)
    tmp = target.with_suffix(".tmp.npy")
    np.save(tmp, data)
    tmp.replace(target)
    stamp_path.write_text(json.dumps(stamp))  # a torn write fails to parse, which means extract again
    return target


def plan_trials(design: Design, subject: int, sessions: list[int]) -> dict[int, list[tuple[int, int]]]:
    """nsd id -> [(session, row in session)] in trial order: where each repeat of an image lives."""
    trials: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for session in sessions:
        for row, nsd_id in enumerate(design.session_images(subject, session)):
            trials[int(nsd_id)].append((session, row))
    return dict(trials)


def assign_splits(
    design: Design, trials: dict[int, dict[int, list]], val_fraction: float, seed: int
) -> tuple[dict[int, dict[int, str]], set[int]]:
    """Per subject nsd id -> split (see module docstring); also the dropped shared ids."""
    shared = set(design.shared.tolist())
    test = shared.intersection(*(set(t) for t in trials.values()))
    draw = np.random.default_rng(seed).random(NSD_IMAGES)  # one uniform per nsd id
    splits, dropped = {}, set()
    for subject, by_image in trials.items():
        splits[subject] = {}
        for nsd_id in sorted(by_image):
            if nsd_id in shared:
                if nsd_id in test:
                    splits[subject][nsd_id] = "test"
                else:
                    dropped.add(nsd_id)
            else:
                splits[subject][nsd_id] = "val" if draw[nsd_id] < val_fraction else "train"
    return splits, dropped


def check_options(subjects: tuple[int, ...], val_fraction: float, image_size: int | None) -> None:
    """Refuse out-of-range options before any file is read: otherwise they fail (or silently give a
    dataset without a train or val split) only after hours of session extraction."""
    in_nsd = bool(subjects) and all(s in NSD_SUBJECTS for s in subjects)
    checks = (
        ("subjects", list(subjects), in_nsd, "NSD subject numbers 1-8 (NSD has 8 subjects)"),
        ("subjects", list(subjects), len(set(subjects)) == len(subjects), "free of repeats (name each once)"),
        ("val_fraction", val_fraction, 0 < val_fraction < 1, "> 0 and < 1 (the share held out, e.g. 0.1)"),
        ("image_size", image_size, image_size is None or image_size >= 1, "unset (native size) or >= 1"),
    )
    check_arguments(checks, label=lambda name: f"data nsd: {name} (--{name.replace('_', '-')})")


def check_splits(splits: dict[int, dict[int, str]], val_fraction: float) -> None:
    """Every subject needs train images (norm stats come from them) and val images (checkpoints select on
    them); with few sessions an extreme val_fraction can leave either empty."""
    for subject, by_image in splits.items():
        counts = Counter(by_image.values())
        for split, fix in (("train", "smaller"), ("val", "larger")):
            if not counts[split]:
                raise DatasetArgumentError(
                    f"data nsd: val_fraction (--val-fraction) {val_fraction} leaves {subject_name(subject)} no "
                    f"{split} images (its sessions hold {counts['train'] + counts['val']} non-test images); "
                    f"use a {fix} val_fraction or convert more sessions"
                )


def resolve_captions(coco_ids: dict[int, int], captions: dict[int, list[str]], allow_missing: bool) -> dict:
    """nsd id -> captions; a missing caption fails before hours of extraction, or becomes a placeholder."""
    missing = sorted(n for n, c in coco_ids.items() if not captions.get(c))
    if missing and not allow_missing:
        raise DatasetError(
            f"{len(missing)} image(s) have no COCO caption (first: nsd id {missing[0]}, cocoId "
            f"{coco_ids[missing[0]]}); check coco_dir or pass allow_missing_captions=True"
        )
    if missing:
        warnings.warn(
            f"{len(missing)} image(s) have no caption; using {PLACEHOLDER_CAPTION!r}", stacklevel=4
        )  # points at the convert_nsd call
    return {n: captions.get(c) or [PLACEHOLDER_CAPTION] for n, c in coco_ids.items()}


def load_image(stimuli: h5py.Dataset, nsd_id: int, image_size: int) -> Image.Image:
    image = Image.fromarray(stimuli[nsd_id])  # [425, 425, 3] uint8
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return image


def _annotations(
    coco_dir: str | Path | None, coco: dict[int, tuple[int, str]], allow_missing: bool
) -> dict[int, tuple[int, list[str], dict | None]]:
    """nsd id -> (cocoId, captions, labels), resolved before extraction so caption problems fail fast."""
    coco_path = None if coco_dir is None else Path(coco_dir)
    coco_splits = {split for _, split in coco.values()}
    captions = load_captions(coco_path, coco_splits) if coco_path is not None else {}
    captions = resolve_captions({n: c for n, (c, _) in coco.items()}, captions, allow_missing)
    labels = load_labels(coco_path, coco_splits) if coco_path is not None else {}
    return {n: (c, captions[n], labels.get(c)) for n, (c, _) in coco.items()}


def _write_samples(
    writer: DatasetWriter, stimuli: h5py.Dataset, samples: list, caches: dict, notes: dict, bar
) -> None:
    """Assemble each (subject, image) sample from the cached sessions (memory-mapped) and write it."""
    data = {(s, n): np.load(path, mmap_mode="r") for s, paths in caches.items() for n, path in paths.items()}
    for split, subject, nsd_id, rows in samples:
        fmri = np.stack([data[subject, n][row] for n, row in rows])  # [repeats, V]
        coco_id, captions, labels = notes[nsd_id]
        image = load_image(stimuli, nsd_id, writer.image_size)
        writer.write(split, subject_name(subject), nsd_id, fmri, image, captions, coco_id, labels)
        bar.update()


def convert_nsd(
    root: str | Path,
    out: str | Path,
    subjects: tuple[int, ...] = (1, 2, 5, 7),
    *,
    coco_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    samples_per_shard: int = 1000,
    image_size: int | None = None,
    overwrite: bool = False,
    allow_missing_captions: bool = False,
    progress: bool = True,
) -> Manifest:
    """Convert the sessions found under ``root`` for ``subjects`` into a dataset at ``out``.

    Every input is checked before the long betas pass, which is cached per session in ``out/.cache`` so an
    interrupted or repeated run (``overwrite=True``) only extracts sessions not yet done.
    """
    check_options(subjects, val_fraction, image_size)
    root, out = Path(root), Path(out)
    if (out / MANIFEST_NAME).exists() and not overwrite:
        raise FileExistsError(
            f"{out} already holds a dataset; pass overwrite=True (--overwrite) to replace it"
        )
    if coco_dir is None and not allow_missing_captions:
        raise DatasetError(
            "coco_dir is required: NSD captions come from COCO 2017 captions_train2017.json and "
            "captions_val2017.json; pass the folder holding them (--coco DIR, or coco_dir=... in Python), "
            "or use placeholder captions (--allow-missing-captions, or allow_missing_captions=True)"
        )
    design = Design(require_source(root / EXPDESIGN, "NSD experiment design"))
    stim_info = load_stim_info(require_source(root / STIM_INFO, "NSD stimulus info"))
    stimuli_path = require_source(root / STIMULI, "NSD stimulus images")
    redo_stimuli = "Download nsd_stimuli.hdf5 again"
    with open_h5(stimuli_path, redo_stimuli) as handle:  # read only after extraction, so checked now
        size = handle["imgBrick"].shape[1] if image_size is None else image_size  # [73000, 425, 425, 3]
    rois = {s: load_roi(require_source(roi_path(root, s), "nsdgeneral ROI")) for s in subjects}
    sessions = {s: find_sessions(root, s) for s in subjects}
    for s, found in sessions.items():
        print(f"{subject_name(s)}: {len(found)} session(s) found: {found}")
    trials = {s: plan_trials(design, s, sessions[s]) for s in subjects}
    splits, dropped = assign_splits(design, trials, val_fraction, seed)
    check_splits(splits, val_fraction)
    samples = [(split, s, n, trials[s][n]) for s in subjects for n, split in splits[s].items()]
    notes = _annotations(coco_dir, {n: stim_info[n] for _, _, n, _ in samples}, allow_missing_captions)

    (out / ".cache").mkdir(parents=True, exist_ok=True)
    caches: dict[int, dict[int, Path]] = {s: {} for s in subjects}
    todo = [(s, n) for s in subjects for n in sessions[s]]
    for s, n in tqdm(todo, desc="NSD sessions", disable=not progress):
        caches[s][n] = cached_session(out / ".cache", root, s, n, rois[s])
    for s in subjects:
        np.save(out / f"nsdgeneral_{subject_name(s)}.npy", rois[s][0].astype(np.int16))  # [V, 3] (x, y, z)

    source = {
        "converter": "nsd",
        "converter_version": CONVERTER_VERSION,
        "subjects": list(subjects),
        "sessions": {subject_name(s): sessions[s] for s in subjects},
        "beta_type": BETA_TYPE,
        "space": SPACE,
        "roi": "nsdgeneral",
        "voxel_order": VOXEL_ORDER,
        "voxel_coords": {subject_name(s): f"nsdgeneral_{subject_name(s)}.npy" for s in subjects},
        "zscore": "per voxel over each session's trials",
        "val_fraction": val_fraction,
        "seed": seed,
        "splits": "test = shared1000 images seen by all subjects (final report only, never checkpoint "
        "selection); val = val_fraction of other images drawn per nsd id; train = the rest",
        "dropped_shared_images": len(dropped),
        "placeholder_captions": sum(captions == [PLACEHOLDER_CAPTION] for _, captions, _ in notes.values()),
        "labels": "coco instance counts" if any(labels for *_, labels in notes.values()) else None,
    }
    voxels = {subject_name(s): len(rois[s][0]) for s in subjects}
    with (
        open_h5(stimuli_path, redo_stimuli) as handle,
        tqdm(total=len(samples), desc="NSD samples", disable=not progress) as bar,
        DatasetWriter(out, "nsd", voxels, size, source, samples_per_shard, overwrite) as writer,
    ):
        _write_samples(writer, handle["imgBrick"], samples, caches, notes, bar)
    return Manifest.load(out)
