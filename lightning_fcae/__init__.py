"""lightning-fcae: fMRI -> image reconstruction (fCAE pretraining, CLIP alignment, latent diffusion)."""

__version__ = "0.1.0"
