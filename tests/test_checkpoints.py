"""Self-describing checkpoints and the reconstruction pipeline API (issue 13)."""

from __future__ import annotations

import os
import shutil

import lightning as L
import pytest
import torch
from diffusers import ImagePipelineOutput
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_fcae.inference.reconstruction_pipeline import (
    FMRIReconstructionPipeline,
    MissingLDMError,
    resolve_ldm,
)
from lightning_fcae.models.factory import CheckpointFormatError, load_model
from lightning_fcae.models.fmri_condition import FMRIInputError
from lightning_fcae.models.ldm import build_ldm, save_ldm
from lightning_fcae.stages import FCAEPretrain
from lightning_fcae.stages.diffusion import LDMFinetune
from tests.test_reconstruct import V, _datamodule, _textured_dataset, _trainer


def _images(pipe, fmri, subject=None, seed=3):
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(fmri))]
    return pipe(fmri, subject, num_inference_steps=2, generator=generators, output_type="pt").images


def make_run_folder(root, steps: int = 2, **finetune):
    """``(data, run folder, module)``: a textured dataset, a tiny frozen LDM inside the run folder and a
    stage-3 checkpoint fine-tuned from it for ``steps`` steps (``finetune``: LDMFinetune's arguments)."""
    data = _textured_dataset(root / "data")
    L.seed_everything(0)
    ldm = save_ldm(build_ldm("tiny"), root / "run" / "ldm")
    module = LDMFinetune(V, pretrained_ldm=str(ldm), clip_tokens=5, clip_dim=16, sample_steps=2, **finetune)
    callback = ModelCheckpoint(dirpath=root / "run" / "stage3" / "checkpoints", save_last=True)
    trainer = _trainer(
        root, max_steps=steps, limit_val_batches=0, enable_checkpointing=True, callbacks=[callback]
    )
    trainer.fit(module, _datamodule(data))
    return data, root / "run", module


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder: a tiny frozen LDM inside it and a stage-3 checkpoint fine-tuned from it."""
    return make_run_folder(tmp_path_factory.mktemp("run"), lr=1e-3)


def test_stage3_checkpoint_holds_what_trains_and_names_its_ldm(run_folder):
    _, run, module = run_folder
    checkpoint = torch.load(run / "stage3/checkpoints/last.ckpt", weights_only=True)
    state = checkpoint["state_dict"]
    assert not any(k.startswith("vq.") for k in state)
    assert {k.removeprefix("unet.") for k in state if k.startswith("unet.")} == set(
        module.trainable_unet_parameters
    )
    assert checkpoint["ldm"]["relative"] == "../../ldm"
    assert set(checkpoint["models"]) == {"aligner", "conditioner"}
    assert set(checkpoint["fmri_preprocessing"]["subjects"]) == {"subj01", "subj02"}


def test_a_copied_run_folder_reconstructs_the_same_images(run_folder, tmp_path):
    data, run, module = run_folder
    fmri = torch.randn(2, V, generator=torch.Generator().manual_seed(0))
    module.eval()
    expected = module.sample(fmri, steps=2, seed=[3, 4])
    copy = shutil.copytree(run, tmp_path / "elsewhere")
    moved = tmp_path / "moved-away"
    shutil.move(str(run), moved)  # the original is gone: only recorded relative paths can work
    try:
        pipe = FMRIReconstructionPipeline.from_pretrained(copy)
        assert torch.allclose(_images(pipe, fmri), expected, atol=1e-6)
        shutil.rmtree(copy / "ldm")
        with pytest.raises(MissingLDMError, match="--ldm"):
            FMRIReconstructionPipeline.from_pretrained(copy)
        pipe = FMRIReconstructionPipeline.from_pretrained(copy, ldm=moved / "ldm")
        assert torch.allclose(_images(pipe, fmri), expected, atol=1e-6)
    finally:
        shutil.move(str(moved), run)


def test_pipeline_round_trips_and_normalises_raw_voxels(run_folder, tmp_path):
    data, run, _ = run_folder
    pipe = FMRIReconstructionPipeline.from_pretrained(run)
    pipe.save_pretrained(tmp_path / "exported")
    assert not list((tmp_path / "exported").rglob("*.ckpt")) and list(
        (tmp_path / "exported").rglob("*.safetensors")
    )
    loaded = FMRIReconstructionPipeline.from_pretrained(tmp_path / "exported")
    fmri = torch.randn(2, V, generator=torch.Generator().manual_seed(1))
    assert torch.equal(_images(pipe, fmri), _images(loaded, fmri))
    # a subject's raw voxels are z-scored with the training statistics, as the DataModule does
    mean, std = _datamodule(data).norm_stats()["subj01"]
    raw = torch.randn(2, len(mean), generator=torch.Generator().manual_seed(2))
    zscored = (raw - torch.as_tensor(mean)) / torch.as_tensor(std)
    assert torch.allclose(_images(loaded, raw, "subj01"), _images(loaded, zscored.float()), atol=1e-5)
    with pytest.raises(ValueError, match="subj01 has"):
        loaded(raw[:, :-1], "subj01")
    output = loaded(raw[:1], "subj01", num_inference_steps=2)
    assert isinstance(output, ImagePipelineOutput)  # what every diffusers pipeline returns
    assert len(output.images) == 1 and output.images[0].size == (pipe.image_size, pipe.image_size)
    (images,) = loaded(raw[:1], "subj01", num_inference_steps=2, return_dict=False)
    assert images[0].size == output.images[0].size
    # the encoder alone, from the export or the checkpoint (the README's API)
    from lightning_fcae import load_fmri_encoder

    for source in (tmp_path / "exported", run / "stage3/checkpoints/last.ckpt"):
        encoder = load_fmri_encoder(source)
        assert torch.equal(encoder(fmri), pipe.fmri_encoder.aligner.encoder(fmri)), source


def test_stage3_resumes_from_a_checkpoint_without_the_frozen_weights(run_folder, tmp_path):
    data, run, module = run_folder
    ldm = run / "ldm"
    resumed = LDMFinetune(V, pretrained_ldm=str(ldm), clip_tokens=5, clip_dim=16, lr=1e-3, sample_steps=2)
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(resumed, _datamodule(data), ckpt_path=run / "stage3/checkpoints/last.ckpt")
    assert trainer.global_step == 3
    frozen = module.frozen_keys()
    own = resumed.state_dict()
    assert all(torch.equal(own[k], module.state_dict()[k]) for k in frozen)
    other = tmp_path / "other-ldm"
    save_ldm(build_ldm("tiny"), other)  # another random LDM: not what the checkpoint was trained on
    wrong = LDMFinetune(V, pretrained_ldm=str(other), clip_tokens=5, clip_dim=16)
    with pytest.raises(ValueError, match="resume with that LDM"):
        _trainer(tmp_path, max_steps=4).fit(
            wrong, _datamodule(data), ckpt_path=run / "stage3/checkpoints/last.ckpt"
        )


def test_an_unchanged_ldm_folder_is_not_hashed_again(run_folder, tmp_path, monkeypatch):
    """A stage-3 checkpoint records its LDM folder's sha256 and each file's size and mtime: a load or a
    resume that finds the folder as recorded takes the sha256 without reading ~1.6 GB (paper size) again;
    a touched file makes it hash the folder (same bytes: accepted), other bytes are refused as before."""
    import lightning_fcae.models.ldm_reference as reference

    _, run, _ = run_folder
    copy = shutil.copytree(run, tmp_path / "run")  # copy2: sizes and modification times kept
    ckpt, ldm = copy / "stage3/checkpoints/last.ckpt", copy / "ldm"
    files = sorted(p.relative_to(ldm).as_posix() for p in ldm.rglob("*") if p.is_file())
    recorded = torch.load(ckpt, weights_only=True)["ldm"]
    assert sorted(recorded["files"]) == files
    hashed, sha256_file = [], reference.sha256_file
    monkeypatch.setattr(reference, "sha256_file", lambda path: hashed.append(path) or sha256_file(path))

    def resume(folder, checkpoint=recorded):  # what a resumed stage 3 checks (on_load_checkpoint)
        module = LDMFinetune(V, pretrained_ldm=str(folder), clip_tokens=5, clip_dim=16)
        module.on_load_checkpoint({"ldm": checkpoint, "state_dict": {}})
        return module

    FMRIReconstructionPipeline.from_checkpoint(ckpt)
    record = resume(ldm).ldm_record()
    assert (record["sha256"], record["files"]) == (recorded["sha256"], recorded["files"]) and hashed == []
    # a record that lists no files: the folder is hashed
    assert resolve_ldm({k: v for k, v in recorded.items() if k != "files"}, ckpt).resolve() == ldm
    assert len(hashed) == len(files)
    # a file touched, the same bytes: hashed, and accepted
    hashed.clear()
    weights = next(ldm.rglob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert resolve_ldm(recorded, ckpt).resolve() == ldm and len(hashed) == len(files)
    resume(ldm)
    assert len(hashed) == 2 * len(files)
    # other bytes (same size): refused, by a load and by a resume
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(data)
    with pytest.raises(MissingLDMError, match="is not the one"):
        resolve_ldm({**recorded, "path": str(ldm)}, ckpt)
    with pytest.raises(ValueError, match="resume with that LDM"):
        resume(ldm)
    # a folder that changes after a run read its weights cannot be recorded as the one it trained on
    module = LDMFinetune(V, pretrained_ldm=str(ldm), clip_tokens=5, clip_dim=16)
    os.utime(ldm / files[0], ns=(0, 0))
    with pytest.raises(ValueError, match="changed .* after this stage-3 run read its weights"):
        module.ldm_record()


def test_a_checkpoint_without_its_models_record_says_to_retrain(run_folder, tmp_path):
    data, _, _ = run_folder
    module = FCAEPretrain(V, size="tiny")
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, _datamodule(data))
    path = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["models"]  # as a development version wrote it
    torch.save(checkpoint, path)
    with pytest.raises(
        CheckpointFormatError, match="development version .* retrain it with the current version"
    ):
        load_model(path)


@pytest.mark.parametrize(
    ("fmri", "message"),
    [
        (
            lambda x: x.index_fill(1, torch.tensor([3, 7]), float("nan"))[:, :],
            r"4 non-finite value\(s\) .* in 2 row\(s\): 0, 1",
        ),
        (
            lambda x: torch.cat([x[:1], x[1:].clamp(max=float("inf")) + float("inf")]),
            r"non-finite .* row\(s\): 1;",
        ),
        (lambda x: x[None], r"must be \[b, V\] .* got shape \[1, 2, 80\]; average a sample's repeats"),
        (lambda x: x[:0], r"empty \(shape \[0, 80\]\)"),
        (lambda x: x.to(torch.complex64), r"real numbers \(a float or integer dtype\), got torch.complex64"),
        (lambda x: "voxels", "tensor or array of numbers, got str"),
    ],
)
def test_the_api_refuses_fmri_it_cannot_use_before_any_model_runs(run_folder, fmri, message):
    """NaN or inf would flow through the models into garbage pixels without a word; a [1, 1, V] stack of
    repeats would fail deep in conv1d: each is one named error, raised before the encoder runs."""
    _, run, _ = run_folder
    pipe = FMRIReconstructionPipeline.from_pretrained(run)
    calls = []
    pipe.fmri_encoder.aligner.register_forward_hook(lambda *args: calls.append(1))
    good = torch.randn(2, V, generator=torch.Generator().manual_seed(0))
    with pytest.raises(FMRIInputError, match=message):
        pipe(fmri(good), num_inference_steps=2)
    assert not calls


def test_an_exported_pipeline_loads_without_the_accelerate_notice(run_folder, tmp_path, capfd):
    _, run, _ = run_folder
    FMRIReconstructionPipeline.from_pretrained(run).save_pretrained(tmp_path / "exported")
    capfd.readouterr()
    FMRIReconstructionPipeline.from_pretrained(tmp_path / "exported")
    assert "accelerate" not in capfd.readouterr().err
