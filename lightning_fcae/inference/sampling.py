"""Batched DDIM sampling of a conditioned LDM with classifier-free guidance, from noise or from an image.

MinD-Vis samples with 250 PLMS steps; this uses diffusers' DDIM (deterministic at ``eta=0``, and the same
timesteps as the CompVis samplers with the LDM schedule's ``steps_offset=1``). With guidance ``w`` the
noise estimate is ``eps_null + w * (eps_cond - eps_null)``; both halves run in one UNet call on a batch
of ``2b``. ``w = 1`` is plain conditional sampling and skips the null half.

Image-to-image (``init_images``, ``strength``), as diffusers' img2img pipelines do it: the image is
VQ-encoded, noised to the timestep that leaves the last ``strength`` of the DDIM steps, and denoised by
those steps only (MindEye and Brain-Diffuser start their diffusion from a low-level image predicted from
the voxels this way). ``strength`` 1.0 ignores the image and samples from noise exactly as without one;
0.0 runs no step and returns the image's VQ round trip.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel, VQModel
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange

from ..models.ldm import vq_downsampling


@torch.no_grad()
def sample_images(
    unet: UNet2DConditionModel,
    vq: VQModel,
    scheduler_config: dict,
    cond_tokens: torch.Tensor,
    pooled: torch.Tensor | None,
    null_tokens: torch.Tensor | None = None,
    null_pooled: torch.Tensor | None = None,
    steps: int = 50,
    guidance: float = 3.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    latent_size: int | None = None,
    eta: float = 0.0,
    init_images: torch.Tensor | None = None,
    strength: float = 1.0,
) -> torch.Tensor:
    """Images ``[b, 3, H, W]`` in [0, 1], one per condition.

    Args:
        unet / vq: the LDM; ``scheduler_config`` its training scheduler's config (DDPM -> DDIM).
        cond_tokens ``[b, L, C]``, pooled ``[b, P]`` (None for a UNet without a time-embedding condition).
        null_tokens / null_pooled: the unconditional embedding, anything that broadcasts to the
            conditions' shapes; needed unless ``guidance == 1``.
        steps: DDIM steps. guidance: classifier-free guidance scale.
        generator: seeds the initial noise (and the DDIM noise when ``eta > 0``): one generator for the
            whole batch, or a list of ``b``, row i's noise drawn from ``generator[i]`` (diffusers'
            ``randn_tensor``), so a row's images do not depend on the rest of the batch. A generator may
            appear several times in the list: its rows then draw from it in turn, in row order.
        latent_size: latent side (default ``unet.config.sample_size``).
        init_images / strength: image-to-image (see the module doc): ``[b, 3, H, W]`` in [0, 1] at the
            LDM's image size, one per condition; ``strength`` in [0, 1].
    """
    check_strength(strength)
    scheduler = DDIMScheduler.from_config(scheduler_config, set_alpha_to_one=False)
    device = cond_tokens.device
    scheduler.set_timesteps(steps, device=device)
    size = latent_size or unet.config.sample_size
    shape = (cond_tokens.shape[0], unet.config.in_channels, size, size)
    if isinstance(generator, list) and len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    # drawn on the generators' device (CPU generators: on the CPU), in fp32, then moved
    noise = randn_tensor(shape, generator=generator, device=device).to(unet.dtype)  # b c h w
    timesteps = scheduler.timesteps
    if init_images is not None:
        check_init_images(init_images, shape[0], size * vq_downsampling(vq))
    if init_images is None or strength == 1.0:  # from noise
        latents = noise * scheduler.init_noise_sigma
    else:
        x = init_images.to(device=device, dtype=vq.dtype) * 2 - 1
        init = vq.encode(x).latents.to(unet.dtype) * vq.config.scaling_factor  # b c h w, pre-quantisation
        if strength == 0.0:  # no step: the VQ round trip
            return decode_latents(vq, init)
        timesteps = timesteps[steps - min(int(steps * strength), steps) :]  # the last `strength` of them
        latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(shape[0]))

    guided = guidance != 1.0
    context, labels = cond_tokens, pooled
    if guided:
        if null_tokens is None or (pooled is not None and null_pooled is None):
            raise ValueError("classifier-free guidance (guidance != 1) needs the null condition")
        context = torch.cat([null_tokens.expand_as(cond_tokens), cond_tokens])  # 2b L C
        if pooled is not None:
            labels = torch.cat([null_pooled.expand_as(pooled), pooled])  # 2b P

    for t in timesteps:
        x = torch.cat([latents, latents]) if guided else latents
        eps = unet(
            scheduler.scale_model_input(x, t), t, encoder_hidden_states=context, class_labels=labels
        ).sample
        if guided:
            eps_null, eps_cond = eps.chunk(2)
            eps = eps_null + guidance * (eps_cond - eps_null)
        latents = scheduler.step(eps, t, latents, eta=eta, generator=generator).prev_sample
    return decode_latents(vq, latents)


def decode_latents(vq: VQModel, latents: torch.Tensor) -> torch.Tensor:
    """Scaled VQ latents ``[b, c, h, w]`` -> images ``[b, 3, H, W]`` in [0, 1] (quantised on decoding)."""
    images = vq.decode(latents.to(vq.dtype) / vq.config.scaling_factor).sample
    return ((images.float() + 1) / 2).clamp(0, 1)


class Img2ImgError(ValueError):
    """A strength outside [0, 1], or init images that do not fit the batch or the LDM's image size."""


def check_strength(strength: float) -> None:
    if not 0.0 <= strength <= 1.0:
        raise Img2ImgError(
            f"strength must be in [0, 1] (1.0: sample from noise, 0.0: the init image), got {strength}"
        )


def check_init_images(images: torch.Tensor, batch: int, size: int) -> None:
    """``images`` must be ``[batch, 3, size, size]`` in [0, 1]."""
    if images.ndim != 4 or images.shape[0] != batch or tuple(images.shape[1:]) != (3, size, size):
        raise Img2ImgError(
            f"init images must be [{batch}, 3, {size}, {size}] (one per fMRI row, at the LDM's image size), "
            f"got {list(images.shape)}"
        )


def sample_conditioned(
    context: torch.Tensor,
    pooled: torch.Tensor,
    condition,
    unet: UNet2DConditionModel,
    vq: VQModel,
    scheduler_config: dict,
    samples: int = 1,
    steps: int = 50,
    guidance: float = 3.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    latent_size: int | None = None,
    init_images: torch.Tensor | None = None,
    strength: float = 1.0,
) -> torch.Tensor:
    """``samples`` images per condition row: ``[b, samples, 3, H, W]`` in [0, 1], all in one batch;
    ``init_images [b, 3, H, W]`` (one per row) and ``strength``: image-to-image (:func:`sample_images`).

    ``context [b, L, C]`` / ``pooled [b, P]`` come from ``condition`` (a ``ClipCondition``), whose null
    value guides. ``generator``: one for the batch, or one per row, from which the row's ``samples``
    images draw in turn, so row i's images depend on ``generator[i]`` only, not on the rest of the batch
    (up to the kernels' batch-dependent rounding). Shared by training-time sampling (``LDMFinetune``)
    and the reconstruction pipeline, so both make the same images.
    """
    if isinstance(generator, list):
        if len(generator) != len(context):
            raise ValueError(f"{len(generator)} generators for {len(context)} condition rows")
        generator = [g for g in generator for _ in range(samples)]  # rows are (b s)
    context, pooled = context.repeat_interleave(samples, 0), pooled.repeat_interleave(samples, 0)
    if init_images is not None:
        check_init_images(init_images, len(context) // samples, init_images.shape[-1])
        init_images = init_images.repeat_interleave(samples, 0)
    null_context, null_pooled = condition.null(len(context))
    images = sample_images(
        unet,
        vq,
        scheduler_config,
        context,
        pooled,
        null_context,
        null_pooled,
        steps=steps,
        guidance=guidance,
        generator=generator,
        latent_size=latent_size,
        init_images=init_images,
        strength=strength,
    )
    return rearrange(images, "(b s) c h w -> b s c h w", s=samples)
