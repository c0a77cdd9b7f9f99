"""Write a synthetic NSD-like dataset through the shared ``DatasetWriter``.

Layout mirrors NSD: each subject sees its own training images (one trial each; a seeded share becomes
"val") and all subjects see the same test images (same image ids, three trials each). Every random draw
comes from a generator keyed by (seed, purpose, subject, image id), never from a shared stream, so a
seed gives byte-identical shards (on one machine) and test scenes are identical across
subjects by construction. Images are produced and discarded in chunks, so memory stays flat at any size.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..schema import Manifest, check_arguments, subject_name
from ..writer import DatasetWriter
from .cortex import GRID, Cortex, image_features, semantic_features
from .profiles import SynthProfile, get_profile
from .scenes import Scene, captions, render, sample_scene

GENERATOR_VERSION = 1
TEST_REPEATS = 3
_CHUNK = 256  # images rendered and simulated together
_CALIBRATION_SCENES = 512
# one seed namespace per purpose: adding draws for one purpose never shifts another
_SCENE, _CORTEX, _NOISE, _SPLIT, _CALIBRATION = range(5)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def scene_for(seed: int, image_id: int) -> tuple[Scene, list[str]]:
    """The scene and captions of one image id: a pure function, so any subject or rerun gets the same."""
    rng = _rng(seed, _SCENE, image_id)
    scene = sample_scene(rng)
    return scene, captions(scene, rng)


def _plan(profile: SynthProfile, index: int, seed: int) -> list[tuple[str, int, int]]:
    """(split, image_id, repeats) for the ``index``-th subject of the profile, in writing order."""
    number = profile.subjects[index]
    first = profile.test_images + index * profile.train_images  # train ids never collide across subjects
    train_ids = np.arange(first, first + profile.train_images)
    val = set(_rng(seed, _SPLIT, number).choice(train_ids, profile.val_images, replace=False).tolist())
    plan = [("val" if i in val else "train", int(i), 1) for i in train_ids]
    return plan + [("test", i, TEST_REPEATS) for i in range(profile.test_images)]


def _calibration(seed: int, size: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of held-out scenes (never written) that every subject's cortex is normalised on."""
    scenes = [sample_scene(_rng(seed, _CALIBRATION, i)) for i in range(_CALIBRATION_SCENES)]
    return image_features([render(s, size) for s in scenes], grid), semantic_features(scenes)


def _scan(cortex: Cortex, chunk: list[tuple[str, int, int]], seed: int, number: int, size: int, grid: int):
    """Render one chunk of the plan and simulate its trials; yields (split, image_id, fmri, image, scene,
    captions) with fmri ``[repeats, V]`` and image ``[size, size, 3]`` uint8."""
    scenes = [scene_for(seed, image_id) for _, image_id, _ in chunk]
    images = [render(scene, size) for scene, _ in scenes]
    signal = cortex.signal(image_features(images, grid), semantic_features([s for s, _ in scenes]))  # [n, V]
    for (split, image_id, repeats), (scene, caps), image, sig in zip(chunk, scenes, images, signal):
        fmri = cortex.measure(sig, repeats, _rng(seed, _NOISE, number, image_id))
        yield split, image_id, fmri, image, scene, caps


def generate(
    profile: str | SynthProfile,
    out: str | Path,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    train_images: int | None = None,
    test_images: int | None = None,
) -> Manifest:
    """Generate the benchmark for ``profile`` into ``out``; returns the written manifest.

    ``train_images`` (per subject, val carved out of them) and ``test_images`` (shared) replace the
    profile's counts: a smaller dataset of the same shape (the ``paper`` profile takes about half an hour
    on 2 cores at full size). The counts used are recorded in the manifest's ``source.profile``.

    Raises ``FileExistsError`` if ``out`` already holds a dataset and ``overwrite`` is false.
    """
    profile = get_profile(profile)
    check_arguments(
        (
            (
                "train_images",
                train_images,
                train_images is None or train_images >= 10,
                ">= 10 (val takes 10%)",
            ),
            ("test_images", test_images, test_images is None or test_images >= 1, ">= 1"),
        ),
        label=lambda name: f"data synth: {name.replace('_', '-')}",
    )
    profile = replace(
        profile,
        train_images=profile.train_images if train_images is None else train_images,
        test_images=profile.test_images if test_images is None else test_images,
    )
    size, grid = profile.image_size, min(GRID, profile.image_size)
    subjects = {subject_name(s): v for s, v in zip(profile.subjects, profile.voxels)}
    source = {
        "generator": "lightning_fcae.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "profile": asdict(profile),
    }
    name = f"synthetic-{profile.name}"
    writer = DatasetWriter(out, name, subjects, size, source, profile.samples_per_shard, overwrite)
    total = len(profile.subjects) * (profile.train_images + profile.test_images)
    with writer, tqdm(total=total, desc=name, unit="sample", disable=not progress) as bar:
        calibration = _calibration(seed, size, grid)
        for index, number in enumerate(profile.subjects):
            subject = subject_name(number)
            cortex = Cortex.create(
                subjects[subject], profile.snr, _rng(seed, _CORTEX, number), grid, calibration
            )
            plan = _plan(profile, index, seed)
            for start in range(0, len(plan), _CHUNK):
                chunk = plan[start : start + _CHUNK]
                for split, image_id, fmri, image, scene, caps in _scan(
                    cortex, chunk, seed, number, size, grid
                ):
                    writer.write(split, subject, image_id, fmri, image, caps, labels=scene.labels())
                bar.update(len(chunk))
    return Manifest.load(out)
