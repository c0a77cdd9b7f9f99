"""img2img reconstruction (issue 23): the low-level image from voxels, noised to a strength and denoised by
the fMRI-conditioned LDM. Strength 1.0 is sampling from noise bit for bit, 0.0 the VQ round trip; bad
strengths and image sizes are named errors; a run folder carries its low-level decoder wherever it goes."""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusers import DDPMScheduler

from lightning_fcae.inference.reconstruct import reconstruct_split
from lightning_fcae.inference.reconstruction_pipeline import FMRIReconstructionPipeline, MissingLowLevelError
from lightning_fcae.inference.sampling import Img2ImgError, sample_images
from lightning_fcae.models.ldm import LDM, build_unet, build_vq, ldm_config
from tests.test_checkpoints import make_run_folder

POOLED = 16


def tiny_cin256() -> LDM:
    """The paper profile's LDM architecture (CompVis cin256-v2: vq-f4 with 2 layers a block, a 4-level UNet
    whose first level has no cross-attention) at tiny widths: 32 px -> 8x8x3 latents."""
    config = ldm_config("cin256-f4")
    config["vq"] |= dict(
        block_out_channels=(8, 16, 16), num_vq_embeddings=32, sample_size=32, norm_num_groups=8
    )
    config["unet"] |= dict(
        sample_size=8, block_out_channels=(8, 16, 16, 32), cross_attention_dim=16, norm_num_groups=8
    )
    torch.manual_seed(0)
    return LDM(
        build_vq(config["vq"]), build_unet(config["unet"], POOLED), DDPMScheduler(**config["scheduler"])
    )


@pytest.fixture(scope="module")
def ldm() -> LDM:
    return tiny_cin256()


def _sample(ldm: LDM, steps: int = 4, seed: int = 0, **kwargs) -> torch.Tensor:
    b = 2
    tokens = torch.randn(b, 3, 16, generator=torch.Generator().manual_seed(1))
    pooled = torch.randn(b, POOLED, generator=torch.Generator().manual_seed(2))
    generator = [torch.Generator().manual_seed(seed + i) for i in range(b)]
    return sample_images(
        ldm.unet, ldm.vq, ldm.scheduler.config, tokens, pooled, torch.zeros(1, 3, 16), torch.zeros(1, POOLED),
        steps=steps, guidance=2.0, generator=generator, **kwargs,
    )  # fmt: skip


def _init_images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_strength_one_is_sampling_from_noise_bit_for_bit(ldm):
    with torch.no_grad():
        assert torch.equal(_sample(ldm, init_images=_init_images(), strength=1.0), _sample(ldm))


def test_strength_zero_is_the_vq_round_trip(ldm):
    images = _init_images()
    with torch.no_grad():
        expected = ((ldm.vq.decode(ldm.vq.encode(images * 2 - 1).latents).sample + 1) / 2).clamp(0, 1)
        assert torch.allclose(_sample(ldm, init_images=images, strength=0.0), expected, atol=1e-6)


def test_a_strength_runs_that_part_of_the_steps_from_the_noised_image(ldm):
    calls = []
    hook = ldm.unet.register_forward_hook(lambda module, args, output: calls.append(args[1]))
    try:
        with torch.no_grad():
            half = _sample(ldm, steps=4, init_images=_init_images(), strength=0.5)
    finally:
        hook.remove()
    scheduler_steps = [int(t) for t in calls]
    assert len(scheduler_steps) == 2 and scheduler_steps == sorted(scheduler_steps, reverse=True)
    assert scheduler_steps[0] < 500  # the last half of the DDIM schedule, not its noisy start
    with torch.no_grad():
        assert not torch.allclose(half, _sample(ldm, steps=4), atol=1e-3)


def test_bad_strengths_and_image_sizes_are_named(ldm):
    with pytest.raises(Img2ImgError, match=r"strength must be in \[0, 1\]"):
        _sample(ldm, init_images=_init_images(), strength=1.5)
    with pytest.raises(Img2ImgError, match=r"init images must be \[2, 3, 32, 32\]"):
        _sample(ldm, init_images=torch.rand(2, 3, 16, 16), strength=0.5)


@pytest.fixture(scope="module")
def lowlevel_run(tmp_path_factory):
    """A run folder whose stage 3 fitted the low-level decoder (``lowlevel: ridge``) on its data."""
    return make_run_folder(tmp_path_factory.mktemp("lowlevel"), steps=1, lowlevel="ridge")


def test_a_moved_run_folder_reconstructs_from_its_lowlevel_image(lowlevel_run, tmp_path):
    """The low-level decoder lives in the stage-3 checkpoint: a run folder moved elsewhere rebuilds it with
    no refit, reconstructs img2img from it, and exports it with the pipeline."""
    data, run, module = lowlevel_run
    assert module.lowlevel.map.subjects == ["subj01", "subj02"]
    assert not any(p.requires_grad for p in module.lowlevel.parameters())
    moved = shutil.move(str(shutil.copytree(run, tmp_path / "copy")), tmp_path / "moved")
    pipe = FMRIReconstructionPipeline.from_pretrained(moved)
    fmri = torch.randn(2, 40, generator=torch.Generator().manual_seed(0))  # subj01's raw voxels
    lowlevel = pipe.lowlevel_image(fmri, "subj01")
    assert lowlevel.shape == (2, 3, 16, 16) and lowlevel.min() >= 0 and lowlevel.max() <= 1
    rows = module.lowlevel.map.subject_indices(["subj01", "subj01"])
    x = pipe.fmri_encoder.preprocess(fmri, "subj01")
    assert torch.allclose(lowlevel, module.lowlevel(x, rows), atol=1e-6)
    round_trip = pipe(fmri, "subj01", output_type="pt", image=lowlevel, strength=0.0).images[:, 0]
    with torch.no_grad():
        vq = pipe.vqvae
        expected = ((vq.decode(vq.encode(lowlevel * 2 - 1).latents).sample + 1) / 2).clamp(0, 1)
    assert torch.allclose(round_trip, expected, atol=1e-6)

    metrics = reconstruct_split(
        moved, data, out=tmp_path / "recon", batch_size=8, progress=False, init="lowlevel", strength=0.5
    )
    assert metrics["meta"]["init"] == "lowlevel" and metrics["meta"]["strength"] == 0.5
    pipe.save_pretrained(tmp_path / "exported")
    exported = FMRIReconstructionPipeline.from_pretrained(tmp_path / "exported")
    assert torch.allclose(exported.lowlevel_image(fmri, "subj01"), lowlevel, atol=1e-6)


def test_img2img_without_a_lowlevel_decoder_is_named(lowlevel_run, tmp_path):
    data, run, _ = lowlevel_run
    pipe = FMRIReconstructionPipeline.from_pretrained(run)
    pipe.lowlevel = None
    with pytest.raises(MissingLowLevelError, match="lowlevel: ridge"):
        pipe.lowlevel_image(torch.zeros(1, 40), "subj01")
    with pytest.raises(Exception, match="--init lowlevel needs --strength"):
        reconstruct_split(run, data, out=tmp_path / "r", progress=False, init="lowlevel")
