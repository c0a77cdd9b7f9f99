"""``lightning-fcae data check``: does a dataset carry decodable signal?

Before spending GPU hours, a closed-form ridge decoder (seconds on a CPU) tells whether fMRI -> image is
learnable at all on a dataset: it reconstructs coarse pixels and predicts a label from z-scored voxels.
Each figure comes with a shuffled control (the same decoder fit after breaking the train voxel/image
pairing) and chance, so "signal" means "better than a decoder that cannot know the answer". The ridge
penalty is chosen on val, never on test. Works on any dataset in the shared format; label figures are
skipped when samples carry no labels (e.g. converted NSD).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ..metrics.ridge import Ridge, best_alpha
from .schema import FMRI_KEY, IMAGE_KEYS, META_KEY, Manifest, ManifestError, SampleError, check_arguments
from .shards import decode_fmri, decode_image, decode_json, load_norm_stats, read_shards


@dataclass
class _Split:
    fmri: np.ndarray  # [n, V] z-scored, trial repeats averaged
    pixels: np.ndarray  # [n, p*p*3] in [0, 1]
    labels: np.ndarray | None  # [n] int, None when any sample lacks the label


def _load(
    root: Path,
    manifest: Manifest,
    split: str,
    subject: str,
    norm: tuple[np.ndarray, np.ndarray],
    pixels: int,
    label: str,
    limit: int | None,
) -> _Split:
    n_voxels = manifest.subjects[subject]
    fmri, images, labels = [], [], []
    for raw in read_shards(root, manifest.shards(split, [subject])):
        if limit is not None and len(fmri) >= limit:
            break
        key = raw["__key__"]
        image_key = next((k for k in IMAGE_KEYS if k in raw), None)
        if image_key is None:
            raise SampleError(f"{key}: no image (expected one of {IMAGE_KEYS})")
        fmri.append(decode_fmri(raw[FMRI_KEY], n_voxels, key, raw.get("__url__")).astype(np.float32).mean(0))
        image = decode_image(raw[image_key], key).resize((pixels, pixels), Image.Resampling.BOX)
        images.append(np.asarray(image, np.float32).reshape(-1) / 255.0)
        labels.append(decode_json(raw[META_KEY], key, META_KEY).get("labels", {}).get(label))
    if not fmri:
        raise ManifestError(
            f"{root}: subject {subject} has no {split} samples; the check needs train, val and test"
        )
    mean, std = norm
    has_labels = bool(labels) and all(v is not None for v in labels)
    return _Split((np.stack(fmri) - mean) / std, np.stack(images), np.array(labels) if has_labels else None)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Centre and L2-normalise each row, so dot products of rows are Pearson correlations."""
    x = x - x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _pixcorr(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.sum(_unit_rows(pred) * _unit_rows(true), 1)))


def _nway(pred: np.ndarray, true: np.ndarray, n_way: int, trials: int, seed: list[int]) -> float:
    """Top-1 of telling each image from ``n_way - 1`` random other test images by pixel correlation.
    ``seed`` fixes the distractors, so a decoder and its control face the same draws."""
    rng = np.random.default_rng(seed)
    corr = _unit_rows(pred) @ _unit_rows(true).T  # [N, N]: predicted image i vs true image j
    n = len(true)
    own = np.diag(corr)
    hits = []
    for _ in range(trials):
        keys = rng.random((n, n))
        np.fill_diagonal(keys, np.inf)  # never draw the image itself as a distractor
        distractors = np.argpartition(keys, n_way - 2, axis=1)[:, : n_way - 1]  # [N, n_way - 1]
        hits.append(own > np.take_along_axis(corr, distractors, 1).max(1))
    return float(np.mean(hits))


def _decode(
    ridge: Ridge, order: np.ndarray, train: _Split, val: _Split, test: _Split, ways: int, trials: int, seed
) -> dict:
    """Fit on train targets taken in ``order`` (identity, or a permutation for the shuffled control)."""
    val_x, test_x = ridge.project(val.fmri), ridge.project(test.fmri)
    pixels = ridge.fit(train.pixels[order])
    scores = [_pixcorr(ridge.predict(val_x, pixels, a), val.pixels) for a in ridge.alphas]
    pred = ridge.predict(test_x, pixels, best_alpha(scores, ridge.alphas))
    out = {"pixcorr": _pixcorr(pred, test.pixels), "nway": _nway(pred, test.pixels, ways, trials, seed)}
    if train.labels is not None and val.labels is not None and test.labels is not None:
        classes = int(max(train.labels.max(), val.labels.max(), test.labels.max())) + 1
        labels = ridge.fit(np.eye(classes)[train.labels[order]])
        # select on val Brier score, not accuracy: on a small val set accuracy is too coarse to rank alphas
        val_onehot = np.eye(classes)[val.labels]
        scores = [-np.mean((ridge.predict(val_x, labels, a) - val_onehot) ** 2) for a in ridge.alphas]
        pred = ridge.predict(test_x, labels, best_alpha(scores, ridge.alphas))
        out["label_acc"] = float(np.mean(pred.argmax(1) == test.labels))
    return out


def check_dataset(
    root: str | Path,
    n_way: int = 50,
    trials: int = 20,
    seed: int = 0,
    max_train: int | None = None,
    pixels: int = 16,
    label: str = "shape",
) -> dict:
    """Ridge-decode every subject; returns ``{"dataset", "n_way", "label", "subjects": {...}, "mean": {...}}``.

    Per subject: PixCorr (mean per-image Pearson of ``pixels`` x ``pixels`` RGB), ``n_way`` identification
    top-1 (fewer ways if the test set is smaller) and ``label`` accuracy, each also for the shuffled
    control, plus chance levels. ``max_train`` caps train samples to bound memory and time on real data.
    """
    # checked before any shard is read; a CLI typo then costs nothing and reads as a one-line error
    checks = (
        ("n_way", n_way, n_way >= 2, ">= 2 (the true image and at least one distractor)"),
        ("trials", trials, trials >= 1, ">= 1"),
        ("pixels", pixels, pixels >= 1, ">= 1"),
        ("max_train", max_train, max_train is None or max_train >= 1, "None or >= 1"),
    )
    check_arguments(checks, label=lambda name: f"data check: {name}")
    root = Path(root)
    manifest = Manifest.load(root)
    norm = load_norm_stats(root, manifest)
    subjects = {}
    for index, subject in enumerate(manifest.subjects):
        load = partial(_load, root, manifest, subject=subject, norm=norm[subject], pixels=pixels, label=label)
        train, val, test = load("train", limit=max_train), load("val", limit=None), load("test", limit=None)
        ways = min(n_way, len(test.fmri))
        if ways < 2:  # n_way >= 2 was checked above, so the test split is what is too small
            raise ManifestError(
                f"{root}: subject {subject} has {ways} test sample(s); identification needs 2"
            )
        ridge = Ridge(train.fmri)
        shuffled = np.random.default_rng([seed, index, 0]).permutation(len(train.fmri))
        real = _decode(ridge, np.arange(len(train.fmri)), train, val, test, ways, trials, [seed, index, 1])
        control = _decode(ridge, shuffled, train, val, test, ways, trials, [seed, index, 1])
        row = {
            "voxels": manifest.subjects[subject],
            **{split: len(s.fmri) for split, s in (("train", train), ("val", val), ("test", test))},
            "n_way": ways,
            **real,
            **{f"{k}_shuffled": v for k, v in control.items()},
            "pixcorr_chance": 0.0,
            "nway_chance": 1.0 / ways,
        }
        if "label_acc" in real:
            row["label_chance"] = float(np.bincount(test.labels).max() / len(test.labels))  # majority class
        subjects[subject] = row
    shared = set.intersection(*(set(r) for r in subjects.values()))
    mean = {k: float(np.mean([r[k] for r in subjects.values()])) for k in sorted(shared)}
    return {"dataset": manifest.name, "n_way": n_way, "label": label, "subjects": subjects, "mean": mean}


def format_check_report(result: dict) -> str:
    """A fixed-width table: one row per subject plus the mean; 'shuf' is the shuffled control."""
    has_labels = "label_acc" in result["mean"]
    head = f"{'subject':<8} {'voxels':>6} {'train':>6} {'val':>5} {'test':>5} | {'PixCorr':>7} {'shuf':>6}"
    head += f" | {'ways':>4} {'top-1':>6} {'shuf':>6} {'chance':>6}"
    if has_labels:
        head += f" | {result['label'] + ' acc':>10} {'shuf':>6} {'chance':>6}"

    def line(name: str, r: dict) -> str:
        text = f"{name:<8} {r['voxels']:>6.0f} {r['train']:>6.0f} {r['val']:>5.0f} {r['test']:>5.0f}"
        text += f" | {r['pixcorr']:>7.3f} {r['pixcorr_shuffled']:>6.3f}"
        text += f" | {r['n_way']:>4.0f} {r['nway']:>6.3f} {r['nway_shuffled']:>6.3f} {r['nway_chance']:>6.3f}"
        if has_labels:
            text += f" | {r['label_acc']:>10.3f} {r['label_acc_shuffled']:>6.3f} {r['label_chance']:>6.3f}"
        return text

    rows = [line(s, r) for s, r in result["subjects"].items()]
    title = f"data check: {result['dataset']} (closed-form ridge, alpha chosen on val, test repeats averaged)"
    return "\n".join([title, head, "-" * len(head), *rows, "-" * len(head), line("mean", result["mean"])])
