"""NSD converter on a tiny fake release with the real layout (tests/nsd_fixture.py)."""

from __future__ import annotations

import io
import json
import os
import re

import h5py
import numpy as np
import pytest
from PIL import Image

from lightning_fcae.data import nsd
from lightning_fcae.data.nsd import convert_nsd
from lightning_fcae.data.schema import (
    DatasetArgumentError,
    DatasetError,
    DatasetNotFoundError,
    Manifest,
    SourceFileError,
)
from lightning_fcae.data.shards import decode_fmri, iter_raw_samples
from tests.nsd_fixture import expected_zscore, fake_image, write_fake_nsd


def read_samples(out) -> list[dict]:
    """Every sample of a converted dataset, decoded: key, split, subject, fmri, image, captions, meta."""
    manifest = Manifest.load(out)
    samples = []
    for split in manifest.splits:
        for shard in manifest.shards(split):
            for raw in iter_raw_samples([out / shard.path]):
                meta = json.loads(raw["meta.json"])
                samples.append(
                    {
                        "key": raw["__key__"],
                        "split": split,
                        "meta": meta,
                        "fmri": decode_fmri(
                            raw["fmri.npy"], manifest.subjects[meta["subject"]], raw["__key__"]
                        ),
                        "image": np.asarray(Image.open(io.BytesIO(raw["image.png"]))),
                        "captions": json.loads(raw["captions.json"]),
                    }
                )
    return samples


def subject_of(sample) -> int:
    return int(sample["meta"]["subject"][4:])


def forbid_extraction(monkeypatch) -> None:
    """Make reading any betas session fail the test: checks must come before the long extraction."""

    def no_extraction(*args):
        raise AssertionError(f"session extracted: {args[0]}")

    monkeypatch.setattr(nsd, "extract_session", no_extraction)


def record_extraction(monkeypatch) -> list:
    """The session files extracted from now on (the extraction itself still runs)."""
    extracted, real = [], nsd.extract_session

    def extract(path, *args):
        extracted.append(path)
        return real(path, *args)

    monkeypatch.setattr(nsd, "extract_session", extract)
    return extracted


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("nsd")
    info = write_fake_nsd(base / "nsd", coco_dir=base / "coco", with_instances=True)
    out = base / "out"
    manifest = convert_nsd(
        info["root"], out, (1, 2), coco_dir=info["coco_dir"], val_fraction=0.2, progress=False
    )
    return info, out, manifest, read_samples(out)


@pytest.fixture
def fake(tmp_path):
    return write_fake_nsd(tmp_path / "nsd", coco_dir=tmp_path / "coco")


def test_splits_keys_and_voxels(converted):
    info, out, manifest, samples = converted
    assert manifest.subjects == {f"subj{s:02d}": int(info["roi"][s].sum()) for s in (1, 2)}
    assert all(re.fullmatch(r"subj0[12]_nsd\d{6}", s["key"]) for s in samples)
    assert all(s["key"] == f"{s['meta']['subject']}_nsd{s['meta']['image_id']:06d}" for s in samples)
    ids = {
        split: {s["meta"]["image_id"] for s in samples if s["split"] == split}
        for split in ("train", "val", "test")
    }
    seen = {s: set(np.concatenate(list(info["trials"][s].values())).tolist()) for s in (1, 2)}
    assert ids["test"] == info["shared"] & seen[1] & seen[2]
    assert ids["train"] and ids["val"] and not ids["train"] & ids["val"]
    assert not (ids["train"] | ids["val"]) & info["shared"]
    assert ids["train"] | ids["val"] == (seen[1] | seen[2]) - info["shared"]
    assert 0.1 < len(ids["val"]) / len(ids["train"] | ids["val"]) < 0.3
    for split in ("train", "val", "test"):  # one sample per (subject, image)
        keys = [s["key"] for s in samples if s["split"] == split]
        assert len(keys) == len(set(keys))
    assert manifest.source["converter"] == "nsd" and manifest.source["val_fraction"] == 0.2
    assert manifest.source["sessions"] == {"subj01": [1, 2], "subj02": [1, 2]}
    coords = np.load(out / "nsdgeneral_subj01.npy")
    assert np.array_equal(coords, np.argwhere(info["roi"][1]))


def test_fmri_matches_trials_repeats_and_zscore(converted):
    info, _, _, samples = converted
    repeat_counts = set()
    for sample in samples:
        subject, nsd_id = subject_of(sample), sample["meta"]["image_id"]
        expected = [
            expected_zscore(images, nsd_id)
            for _, images in sorted(info["trials"][subject].items())
            for shown in images
            if shown == nsd_id
        ]
        fmri = sample["fmri"].astype(np.float32)
        assert fmri.shape == (len(expected), info["roi"][subject].sum())
        np.testing.assert_allclose(fmri, np.repeat(np.array(expected)[:, None], fmri.shape[1], 1), atol=5e-3)
        repeat_counts.add(len(expected))
    assert repeat_counts == {3}  # every session present: each image shown 3 times, as in full NSD


def test_session_cache_is_zscored_per_voxel(converted):
    _, out, manifest, _ = converted
    for subject in (1, 2):
        for session in (1, 2):
            data = np.load(out / ".cache" / f"subj{subject:02d}_session{session:02d}.npy").astype(np.float64)
            assert data.shape == (750, manifest.subjects[f"subj{subject:02d}"])
            np.testing.assert_allclose(data.mean(0), 0, atol=1e-3)
            np.testing.assert_allclose(data.std(0), 1, atol=1e-3)


def test_images_captions_labels(converted):
    info, _, manifest, samples = converted
    assert manifest.image_size == 16
    for sample in samples:
        nsd_id = sample["meta"]["image_id"]
        assert np.array_equal(sample["image"], fake_image(nsd_id))
        assert sample["captions"] == info["captions"][nsd_id]
        assert sample["meta"]["coco_id"] == info["coco"][nsd_id][0]
        assert sample["meta"]["labels"] == {("cat", "dog")[nsd_id % 2]: 2}


def test_voxel_order_follows_nifti_xyz(fake, tmp_path):
    """Voxel v of the cache is betas[:, z, y, x] for the v-th (x, y, z) of np.argwhere(roi > 0)."""
    path = nsd.betas_path(fake["root"], 1, 1)
    with h5py.File(path, "r+") as handle:
        handle["betas"][...] = np.random.default_rng(1).integers(-3000, 3000, handle["betas"].shape)
        betas = handle["betas"][...]  # [750, Z, Y, X]
    convert_nsd(fake["root"], tmp_path / "out", (1,), coco_dir=fake["coco_dir"], progress=False)
    x, y, z = np.argwhere(fake["roi"][1]).T
    expected = nsd.zscore(betas[:, z, y, x].astype(np.float32) / 300)
    cached = np.load(tmp_path / "out/.cache/subj01_session01.npy")
    np.testing.assert_allclose(cached, expected, atol=5e-3)


def test_partial_download_and_resize(fake, tmp_path, capsys):
    nsd.betas_path(fake["root"], 2, 2).unlink()
    manifest = convert_nsd(
        fake["root"], tmp_path / "out", (1, 2), coco_dir=fake["coco_dir"], image_size=8, progress=False
    )
    assert manifest.source["sessions"] == {"subj01": [1, 2], "subj02": [1]}
    assert "subj02: 1 session(s) found: [1]" in capsys.readouterr().out
    samples = read_samples(tmp_path / "out")
    subj2 = [s for s in samples if subject_of(s) == 2]
    assert all(len(s["fmri"]) == list(fake["trials"][2][1]).count(s["meta"]["image_id"]) for s in subj2)
    assert {len(s["fmri"]) for s in subj2} == {1, 2, 3}
    seen2 = set(fake["trials"][2][1].tolist())
    assert {s["meta"]["image_id"] for s in samples if s["split"] == "test"} <= seen2
    assert manifest.image_size == 8 and samples[0]["image"].shape == (8, 8, 3)


def test_rerun_reuses_session_cache(fake, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = convert_nsd(fake["root"], out, (1, 2), coco_dir=fake["coco_dir"], progress=False)
    caches = sorted((out / ".cache").glob("*.npy"))
    mtimes = [os.stat(p).st_mtime_ns for p in caches]
    with pytest.raises(FileExistsError):
        convert_nsd(fake["root"], out, (1, 2), coco_dir=fake["coco_dir"], progress=False)
    forbid_extraction(monkeypatch)
    second = convert_nsd(fake["root"], out, (1, 2), coco_dir=fake["coco_dir"], overwrite=True, progress=False)
    assert [os.stat(p).st_mtime_ns for p in caches] == mtimes
    assert first.splits["train"].shards == second.splits["train"].shards  # byte-identical shards


@pytest.mark.parametrize(
    "missing",
    [
        "nsddata/experiments/nsd/nsd_expdesign.mat",
        "nsddata/ppdata/subj02/func1pt8mm/roi/nsdgeneral.nii.gz",
        "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5",
    ],
)
def test_missing_file_is_named(fake, tmp_path, missing):
    (fake["root"] / missing).unlink()
    with pytest.raises(DatasetNotFoundError, match=re.escape(missing.rsplit("/", 1)[1])):
        convert_nsd(fake["root"], tmp_path / "out", (1, 2), coco_dir=fake["coco_dir"], progress=False)


def test_subject_without_sessions(fake, tmp_path):
    for session in (1, 2):
        nsd.betas_path(fake["root"], 2, session).unlink()
    with pytest.raises(DatasetNotFoundError, match="betas_session01.hdf5.*subj02"):
        convert_nsd(fake["root"], tmp_path / "out", (1, 2), coco_dir=fake["coco_dir"], progress=False)


def test_missing_captions(fake, tmp_path):
    with pytest.raises(DatasetError, match="coco_dir is required") as info:
        convert_nsd(fake["root"], tmp_path / "out", (1,), progress=False)
    for name in ("--coco", "coco_dir=", "--allow-missing-captions", "allow_missing_captions=True"):
        assert name in str(info.value)  # the fix for a CLI user and for a Python caller
    nsd_id = int(fake["trials"][1][1][0])  # the first image subj01 saw
    victim, coco_split = fake["coco"][nsd_id]
    path = fake["coco_dir"] / f"captions_{coco_split}.json"
    data = json.loads(path.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != victim]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=f"cocoId {victim}"):
        convert_nsd(fake["root"], tmp_path / "out", (1,), coco_dir=fake["coco_dir"], progress=False)
    with pytest.warns(UserWarning, match="1 image"):
        manifest = convert_nsd(
            fake["root"],
            tmp_path / "out",
            (1,),
            coco_dir=fake["coco_dir"],
            allow_missing_captions=True,
            progress=False,
        )
    assert manifest.source["placeholder_captions"] == 1
    (placeholder,) = [s for s in read_samples(tmp_path / "out") if s["meta"]["image_id"] == nsd_id]
    assert placeholder["captions"] == [nsd.PLACEHOLDER_CAPTION]


@pytest.mark.parametrize(
    "option, value, shown",
    [
        ("val_fraction", 1.5, "1.5"),
        ("val_fraction", 1.0, "1.0"),
        ("val_fraction", 0.0, "0.0"),
        ("val_fraction", -0.2, "-0.2"),
        ("subjects", (1, 1), "[1, 1]"),
        ("subjects", (9,), "[9]"),
        ("subjects", (0, 1), "[0, 1]"),
        ("image_size", 0, "0"),
        ("image_size", -4, "-4"),
    ],
)
def test_bad_option_is_refused_before_any_file_is_read(tmp_path, option, value, shown):
    """The root does not exist: only a check made before reading anything can answer first."""
    options = {"subjects": (1,), "val_fraction": 0.1, "image_size": None, option: value}
    with pytest.raises(DatasetArgumentError) as info:
        convert_nsd(tmp_path / "no-nsd", tmp_path / "out", coco_dir=tmp_path, progress=False, **options)
    message = str(info.value)
    assert f"{option} (--{option.replace('_', '-')})" in message and f"got {shown}" in message
    if option == "subjects":
        assert "1-8" in message or "once" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("val_fraction, empty", [(1e-6, "val"), (1 - 1e-6, "train")])
def test_val_fraction_that_empties_a_split_is_refused_before_extraction(
    fake, tmp_path, monkeypatch, val_fraction, empty
):
    forbid_extraction(monkeypatch)
    with pytest.raises(
        DatasetArgumentError, match=rf"--val-fraction.*{val_fraction}.*subj01 no {empty} image"
    ):
        convert_nsd(
            fake["root"],
            tmp_path / "out",
            (1, 2),
            coco_dir=fake["coco_dir"],
            val_fraction=val_fraction,
            progress=False,
        )


def test_truncated_session_is_named_and_conversion_resumes(fake, tmp_path, monkeypatch):
    path = nsd.betas_path(fake["root"], 2, 1)
    complete = path.read_bytes()
    path.write_bytes(complete[: len(complete) // 2])  # a partly downloaded session
    out = tmp_path / "out"
    with pytest.raises(SourceFileError, match=re.escape(str(path)) + ".*partly downloaded.*again"):
        convert_nsd(fake["root"], out, (1, 2), coco_dir=fake["coco_dir"], progress=False)
    path.write_bytes(complete)  # re-downloaded
    extracted = record_extraction(monkeypatch)
    manifest = convert_nsd(fake["root"], out, (1, 2), coco_dir=fake["coco_dir"], progress=False)
    assert extracted == [path, nsd.betas_path(fake["root"], 2, 2)]  # subj01 came from the cache
    assert manifest.source["sessions"] == {"subj01": [1, 2], "subj02": [1, 2]}


def test_truncated_stimuli_is_named_before_extraction(fake, tmp_path, monkeypatch):
    path = fake["root"] / nsd.STIMULI
    path.write_bytes(path.read_bytes()[:1000])
    forbid_extraction(monkeypatch)
    with pytest.raises(SourceFileError, match=re.escape(str(path)) + ".*partly downloaded.*again"):
        convert_nsd(fake["root"], tmp_path / "out", (1,), coco_dir=fake["coco_dir"], progress=False)


def test_redownloaded_session_is_extracted_again(fake, tmp_path, monkeypatch):
    """The cache must follow the session file, not just match its shape, even with overwrite=True."""
    out = tmp_path / "out"
    convert_nsd(fake["root"], out, (1,), coco_dir=fake["coco_dir"], progress=False)
    path = nsd.betas_path(fake["root"], 1, 2)
    before = os.stat(path)
    with h5py.File(path, "r+") as handle:  # new content, same size (betas are not compressed)
        handle["betas"][...] = np.random.default_rng(2).integers(-3000, 3000, handle["betas"].shape)
        betas = handle["betas"][...]
    # a real download takes longer than the filesystem's timestamp tick; make that certain here
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    extracted = record_extraction(monkeypatch)
    convert_nsd(fake["root"], out, (1,), coco_dir=fake["coco_dir"], overwrite=True, progress=False)
    assert extracted == [path]
    x, y, z = np.argwhere(fake["roi"][1]).T
    cached = np.load(out / ".cache/subj01_session02.npy")
    np.testing.assert_allclose(cached, nsd.zscore(betas[:, z, y, x].astype(np.float32) / 300), atol=5e-3)
