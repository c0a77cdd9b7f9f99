"""The synthetic benchmark: format, truthfulness, determinism and, above all, that it carries signal."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_fcae.data.check import check_dataset, format_check_report
from lightning_fcae.data.schema import FMRI_KEY, META_KEY, Manifest
from lightning_fcae.data.shards import (
    decode_fmri,
    decode_image,
    decode_json,
    iter_raw_samples,
    load_norm_stats,
)
from lightning_fcae.data.synthetic import GENERATOR_VERSION, PROFILES, generate, get_profile
from lightning_fcae.data.synthetic.generate import TEST_REPEATS, scene_for
from lightning_fcae.data.synthetic.scenes import render

TINY = PROFILES["tiny"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    return root, generate("tiny", root, seed=0, progress=False)


@pytest.fixture(scope="module")
def samples(tiny) -> list[dict]:
    """Every sample of tiny, decoded: split, subject, meta, fmri [repeats, V], image, captions."""
    root, manifest = tiny
    out = []
    for split in manifest.splits:
        for shard in manifest.shards(split):
            for raw in iter_raw_samples([root / shard.path]):
                key = raw["__key__"]
                out.append(
                    {
                        "split": split,
                        "meta": decode_json(raw[META_KEY], key, META_KEY),
                        "fmri": decode_fmri(raw[FMRI_KEY], manifest.subjects[shard.subject], key),
                        "image": np.asarray(decode_image(raw["image.png"], key)),
                        "captions": decode_json(raw["captions.json"], key, "captions"),
                    }
                )
    return out


def test_profiles():
    paper, small = PROFILES["paper"], PROFILES["small"]
    assert paper.subjects == small.subjects == (1, 2, 5, 7)
    assert paper.voxels == (15725, 10285, 9551, 9187)
    assert small.voxels == tuple(round(v / 4) for v in paper.voxels)
    assert (paper.train_images, paper.test_images, paper.image_size) == (8192, 900, 256)
    assert get_profile(TINY) is TINY
    with pytest.raises(ValueError, match="unknown synthetic profile"):
        get_profile("huge")


def test_manifest_matches_profile(tiny):
    root, manifest = tiny
    assert manifest.name == "synthetic-tiny"
    assert manifest.image_size == TINY.image_size
    assert manifest.subjects == {"subj01": TINY.voxels[0], "subj02": TINY.voxels[1]}
    assert manifest.source["seed"] == 0 and manifest.source["generator_version"] == GENERATOR_VERSION
    assert manifest.source["profile"]["snr"] == TINY.snr
    for subject in manifest.subjects:
        count = {
            split: sum(s.samples for s in manifest.shards(split, [subject])) for split in manifest.splits
        }
        assert count["train"] + count["val"] == TINY.train_images
        assert count["val"] == TINY.val_images > 0
        assert count["test"] == TINY.test_images
    assert Manifest.load(root).to_json() == manifest.to_json()
    assert set(load_norm_stats(root, manifest)) == set(manifest.subjects)


def test_samples_are_the_described_scenes(samples):
    """Images are exactly the rendered scene, labels are the scene's, captions name the largest object."""
    for sample in samples[::7]:  # rendering every sample again would double the test's cost
        meta = sample["meta"]
        scene, captions = scene_for(0, meta["image_id"])
        assert np.array_equal(sample["image"], render(scene, TINY.image_size))
        assert meta["labels"] == scene.labels() and meta["split"] == sample["split"]
        assert sample["captions"] == captions and 1 <= len(captions) <= 3
        assert all(scene.objects[0].name in caption for caption in captions)


def test_repeats_and_shared_test_images(samples):
    ids = {}
    for sample in samples:
        meta = sample["meta"]
        assert sample["fmri"].shape[0] == (TEST_REPEATS if sample["split"] == "test" else 1)
        assert np.isfinite(sample["fmri"]).all()
        ids.setdefault((sample["split"] == "test", meta["subject"]), set()).add(meta["image_id"])
    assert ids[(True, "subj01")] == ids[(True, "subj02")] == set(range(TINY.test_images))
    assert not ids[(False, "subj01")] & ids[(False, "subj02")]  # each subject sees its own train images
    test_trials = [s["fmri"] for s in samples if s["split"] == "test"]
    assert not np.array_equal(test_trials[0][0], test_trials[0][1])  # repeats carry independent noise


def test_voxel_order_is_smooth(tiny, samples):
    """Neighbouring voxels co-vary far more than random pairs: the redundancy masked modelling exploits."""
    root, manifest = tiny
    mean, std = load_norm_stats(root, manifest)["subj01"]
    x = np.stack(
        [s["fmri"][0] for s in samples if s["meta"]["subject"] == "subj01" and s["split"] == "train"]
    )
    z = (x - mean) / std
    z = (z - z.mean(0)) / z.std(0)
    neighbours = np.mean(z[:, 1:] * z[:, :-1])
    shuffled = np.mean(z * z[:, np.random.default_rng(0).permutation(z.shape[1])])
    assert neighbours > shuffled + 0.3


def test_same_seed_same_bytes(tiny, tmp_path):
    _, manifest = tiny
    again = generate("tiny", tmp_path / "again", seed=0, progress=False)
    other = generate("tiny", tmp_path / "other", seed=1, progress=False)

    def hashes(m):
        return [(s.path, s.sha256) for split in sorted(m.splits) for s in m.shards(split)] + [
            m.norm_stats_sha256
        ]

    assert hashes(again) == hashes(manifest)
    assert not set(hashes(other)) & set(hashes(manifest))


def test_existing_dataset_needs_overwrite(tiny):
    root, _ = tiny
    with pytest.raises(FileExistsError, match="overwrite"):
        generate("tiny", root, progress=False)


def test_benchmark_has_signal(tiny):
    """A ridge decoder beats its shuffled control clearly, and does not solve the benchmark."""
    root, _ = tiny
    result = check_dataset(root, n_way=50, trials=10)
    mean = result["mean"]
    assert mean["n_way"] == TINY.test_images  # 50-way clamps to the 48 test images
    assert mean["pixcorr"] > mean["pixcorr_shuffled"] + 0.1
    assert mean["nway"] > 3 * mean["nway_chance"] and mean["nway"] > mean["nway_shuffled"] + 0.04
    assert mean["label_acc"] > mean["label_acc_shuffled"] + 0.15 and mean["label_acc"] > mean["label_chance"]
    assert mean["pixcorr"] < 0.8 and mean["label_acc"] < 0.9 and mean["nway"] < 0.8
    report = format_check_report(result)
    assert "subj01" in report and "shape acc" in report and "mean" in report


def test_check_caps_train_samples(tiny):
    result = check_dataset(tiny[0], max_train=64, trials=2)
    assert all(row["train"] == 64 and row["test"] == TINY.test_images for row in result["subjects"].values())
