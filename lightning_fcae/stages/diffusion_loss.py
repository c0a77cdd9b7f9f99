"""The latent-diffusion training loss (paper eq. 5), shared by stage 3's fine-tuning and the stand-in LDM's
pretraining (:mod:`.ldm_pretrain`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler


def diffusion_loss(
    unet, scheduler: DDPMScheduler, latents: torch.Tensor, generator: torch.Generator | None = None, **cond
) -> torch.Tensor:
    """Eq. 5: noise the latents at a uniform random timestep and regress the noise (or v / x0 when the
    scheduler was trained with that ``prediction_type``)."""
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    t = torch.randint(
        0, scheduler.config.num_train_timesteps, (b,), generator=generator, device=latents.device
    )
    noisy = scheduler.add_noise(latents, noise, t)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
    elif kind == "sample":  # the clean latents
        target = latents
    else:
        raise ValueError(f"unknown prediction_type {kind!r}: epsilon, v_prediction or sample")
    return F.mse_loss(unet(noisy, t, **cond).sample.float(), target.float())
