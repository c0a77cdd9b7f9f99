"""Stage 3: latent diffusion conditioned on fMRI (paper section 2.2, eq. 4-5; settings in 3.2.2).

:class:`LDMFinetune` fine-tunes a pretrained LDM on ``(fMRI, image)`` pairs: the fMRI encoder and the
condition projector train, and inside the UNet only the cross-attention layers and the (new)
time-embedding projection do; the VQ autoencoder and the rest of the UNet stay frozen. The loss is the
epsilon-prediction MSE of eq. 5.

:class:`LDMPretrain` exists because the synthetic benchmark has no pretrained LDM offline: it trains a
small VQ autoencoder and then a caption-conditioned UNet on the benchmark's images, and exports a
diffusers directory that LDMFinetune loads like a converted CompVis model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, VQModel
from einops import rearrange
from lightning.pytorch.utilities import rank_zero_info

from ..models.ldm import (
    LDM,
    FMRIConditioner,
    HashedCaptionEncoder,
    LDMConfigName,
    add_time_conditioning,
    build_ldm,
    build_unet,
    build_vq,
    freeze_for_finetuning,
    load_ldm,
    save_ldm,
    to_model_range,
    vq_downsampling,
)
from ..models.ldm import ldm_config as named_ldm_config
from ..models.sizes import model_size
from ..models.vit import FMRIEncoder
from ..sampling import sample_images
from .optim import adamw_warmup_cosine
from .pretrain import ModelSize, load_pretrained
from .seeding import RankSeededModule


def load_fmri_encoder(path: str) -> FMRIEncoder:
    """The fMRI encoder of a stage-2 (FCAEAlign) or stage-1 (FCAEPretrain / MAEPretrain / DCMAEPretrain)
    checkpoint, on CPU.

    Stage 2 is the paper's chain; a stage-1 checkpoint gives the MinD-Vis (MAEPretrain) or vis-dec
    (DCMAEPretrain) baseline (no alignment).
    """
    hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    if "stage1" in hparams:  # FCAEAlign records its stage-1 architecture
        from .align import load_aligned  # imports open_clip

        return load_aligned(path).encoder
    return load_pretrained(path).encoder


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
    else:  # "sample": the clean latents
        target = latents
    return F.mse_loss(unet(noisy, t, **cond).sample.float(), target.float())


class LDMFinetune(RankSeededModule):
    """The paper's stage 3: ``E || eps - eps_theta(z_t, t, tau(fMRI)) ||^2`` with tau = fMRI encoder +
    :class:`FMRIConditioner`.

    Trainable: the fMRI encoder, the conditioner (incl. its null condition), and in the UNet every
    transformer block's ``attn2`` + ``norm2`` and the ``class_embedding`` (:func:`freeze_for_finetuning`).
    Frozen: the VQ autoencoder (kept in eval mode) and all other UNet weights.

    Args:
        num_voxels: padded voxel count (linked from the DataModule by the CLI).
        pretrained_ldm: diffusers LDM directory (:func:`load_ldm`); None builds a random ``ldm_config``
            (tests only: fine-tuning a random UNet's cross-attention is not the method).
        encoder_ckpt: checkpoint holding the fMRI encoder (:func:`load_fmri_encoder`); None builds a fresh
            encoder of size ``encoder_size``.
        condition_tokens: cross-attention tokens L. cond_drop: probability of the null condition in training.
        lr / min_lr / warmup_fraction / weight_decay: AdamW; min_lr None keeps lr constant (MinD-Vis).
        image_size: resize images to this side before the VQ (None: as the DataModule delivers them).
        sample_steps / guidance_scale: defaults of :meth:`reconstruct` and ``predict_step``.
    """

    def __init__(
        self,
        num_voxels: int,
        pretrained_ldm: str | None = None,
        ldm_config: LDMConfigName = "tiny",
        encoder_ckpt: str | None = None,
        encoder_size: ModelSize = "tiny",
        condition_tokens: int = 77,
        cond_drop: float = 0.1,
        lr: float = 5.3e-5,
        min_lr: float | None = None,
        warmup_fraction: float = 0.0,
        weight_decay: float = 0.01,
        image_size: int | None = None,
        sample_steps: int = 250,
        guidance_scale: float = 3.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        ldm = load_ldm(pretrained_ldm) if pretrained_ldm else build_ldm(ldm_config)
        if encoder_ckpt:
            self.encoder = load_fmri_encoder(encoder_ckpt)
        else:
            self.encoder = FMRIEncoder(num_voxels, model_size(encoder_size)[0])
        if self.encoder.num_patches * self.encoder.patch_size != num_voxels:
            raise ValueError(
                f"the fMRI encoder takes {self.encoder.num_patches * self.encoder.patch_size} voxels, the data "
                f"has {num_voxels}: use the subjects and patch size the encoder was pretrained with"
            )
        context_dim = ldm.unet.config.cross_attention_dim
        self.conditioner = FMRIConditioner(
            self.encoder.embed_dim, self.encoder.num_patches + 1, context_dim, condition_tokens
        )
        self.unet = add_time_conditioning(ldm.unet, context_dim)
        self.trainable_unet_parameters = freeze_for_finetuning(self.unet)
        self.vq = ldm.vq.requires_grad_(False).eval()
        self.noise_scheduler = ldm.scheduler

    def train(self, mode: bool = True):
        super().train(mode)
        self.vq.eval()  # frozen: never in train mode
        return self

    @property
    def latent_size(self) -> int:
        size = self.hparams.image_size
        return size // vq_downsampling(self.vq) if size else self.unet.config.sample_size

    def condition(self, fmri: torch.Tensor, drop: torch.Tensor | None = None):
        """``fmri [b, V]`` -> cross-attention tokens ``[b, L, C]`` and pooled ``[b, P]``."""
        return self.conditioner(self.encoder(fmri), drop)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``[b, 3, H, W]`` in [0, 1] -> scaled VQ latents ``[b, c, h, w]`` (pre-quantisation, as CompVis)."""
        x = to_model_range(images, self.hparams.image_size)
        return self.vq.encode(x).latents * self.vq.config.scaling_factor

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        latents = self.encode_images(batch["image"])
        drop = None
        if self.training and self.hparams.cond_drop > 0:
            rand = torch.rand(len(latents), generator=generator, device=latents.device)
            drop = rand < self.hparams.cond_drop
        tokens, pooled = self.condition(batch["fmri"], drop)
        return diffusion_loss(
            self.unet,
            self.noise_scheduler,
            latents,
            generator,
            encoder_hidden_states=tokens,
            class_labels=pooled,
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """``val/loss``, and ``val/condition_gain``: how much that loss rises when every sample is given
        another sample's fMRI (the same noise and timesteps). Near zero means the model ignores the
        fMRI, which no loss curve shows and sampling takes long to reveal. Samples that happen to share
        an image with their neighbour make it a lower bound."""
        # noise and timesteps seeded by batch index: both terms are comparable across epochs
        loss = self.loss(batch, torch.Generator(self.device).manual_seed(batch_idx))
        shuffled = {**batch, "fmri": batch["fmri"].roll(1, dims=0)}
        loss_shuffled = self.loss(shuffled, torch.Generator(self.device).manual_seed(batch_idx))
        size = len(batch["key"])
        self.log("val/loss", loss, sync_dist=True, batch_size=size)
        self.log("val/condition_gain", loss_shuffled - loss, sync_dist=True, batch_size=size)

    @torch.no_grad()
    def reconstruct(
        self,
        fmri: torch.Tensor,
        steps: int | None = None,
        guidance: float | None = None,
        samples: int = 1,
        seed: int | list[int] = 0,
    ) -> torch.Tensor:
        """Images decoded from ``fmri [b, V]``: ``[b, samples, 3, H, W]`` in [0, 1], all in one batch.

        ``seed``: an int seeds one generator for the whole batch; a list of ``b`` seeds gives each fMRI
        row its own generator, from which its ``samples`` images draw in turn, so row i's images depend
        on ``seeds[i]`` only, not on what else is in the batch (up to the kernels' batch-dependent
        rounding).
        """
        if isinstance(seed, int):
            generator = torch.Generator(self.device).manual_seed(seed)
        elif len(seed) == len(fmri):  # rows are (b s): row b's generator repeated samples times
            generators = [torch.Generator(self.device).manual_seed(s) for s in seed]
            generator = [g for g in generators for _ in range(samples)]
        else:
            raise ValueError(f"{len(seed)} seeds for {len(fmri)} fMRI samples")
        tokens, pooled = self.condition(fmri)
        tokens, pooled = tokens.repeat_interleave(samples, 0), pooled.repeat_interleave(samples, 0)
        null_tokens, null_pooled = self.conditioner.null(len(tokens))
        images = sample_images(
            self.unet,
            self.vq,
            self.noise_scheduler.config,
            tokens,
            pooled,
            null_tokens,
            null_pooled,
            steps=steps or self.hparams.sample_steps,
            guidance=self.hparams.guidance_scale if guidance is None else guidance,
            generator=generator,
            latent_size=self.latent_size,
        )
        return rearrange(images, "(b s) c h w -> b s c h w", s=samples)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"key": batch["key"], "image": batch.get("image"), "recon": self.reconstruct(batch["fmri"])}

    def configure_optimizers(self):
        hp = self.hparams
        min_lr = hp.lr if hp.min_lr is None else hp.min_lr
        return adamw_warmup_cosine(self, hp.lr, min_lr, hp.warmup_fraction, hp.weight_decay)

    def on_fit_start(self) -> None:
        counts = {
            "encoder": sum(p.numel() for p in self.encoder.parameters()),
            "conditioner": sum(p.numel() for p in self.conditioner.parameters()),
            "unet (trainable)": sum(p.numel() for p in self.unet.parameters() if p.requires_grad),
            "unet (frozen)": sum(p.numel() for p in self.unet.parameters() if not p.requires_grad),
            "vq (frozen)": sum(p.numel() for p in self.vq.parameters()),
        }
        rank_zero_info(
            "LDMFinetune parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items())
        )


class LDMPretrain(RankSeededModule):
    """The synthetic benchmark's stand-in for a pretrained LDM, trained in two runs (``stage``):

    * ``vq``: the VQ autoencoder, loss ``L1(x_rec, x) + commit_weight * commitment`` (diffusers'
      VectorQuantizer loss; no LPIPS or GAN: the synthetic images are flat shapes).
    * ``unet``: a UNet on the frozen VQ's latents, conditioned on captions through cross-attention
      (:class:`HashedCaptionEncoder`), epsilon MSE. Latents are scaled to unit std by the first batch
      (LDM's ``scale_by_std``); the scale is exported as the VQ's ``scaling_factor``.

    ``export_dir`` collects both: the vq run writes ``vqvae/``, the unet run reads it (or ``vq_path``) and
    writes ``vqvae/``, ``unet/``, ``scheduler/``, which :func:`load_ldm` reads. The caption encoder is not
    exported: fine-tuning replaces it by the fMRI condition.
    """

    def __init__(
        self,
        num_voxels: int = 0,
        stage: Literal["vq", "unet"] = "vq",
        ldm_config: LDMConfigName = "small",
        export_dir: str | None = "checkpoints/ldm/synthetic-small",
        vq_path: str | None = None,
        commit_weight: float = 1.0,
        lr: float = 2e-4,
        min_lr: float = 1e-5,
        warmup_fraction: float = 0.02,
        weight_decay: float = 0.0,
        image_size: int | None = None,
        vocab_size: int = 4096,
        max_words: int = 16,
    ):
        super().__init__()
        self.save_hyperparameters()
        config = named_ldm_config(ldm_config)
        if stage == "vq":
            self.vq = build_vq(config["vq"])
            return
        path = vq_path or (export_dir and str(Path(export_dir) / "vqvae"))
        if not path or not Path(path).is_dir():
            raise FileNotFoundError(f"stage 'unet' needs the VQ from stage 'vq': no directory {path!r}")
        self.vq = VQModel.from_pretrained(path).requires_grad_(False).eval()
        self.unet = build_unet(config["unet"])
        self.captions = HashedCaptionEncoder(self.unet.config.cross_attention_dim, vocab_size, max_words)
        self.noise_scheduler = DDPMScheduler(**config["scheduler"])
        self.register_buffer("latent_scale", torch.zeros(()))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.stage == "unet":
            self.vq.eval()
        return self

    def _caption_batch(self, captions: list[list[str]]) -> list[str]:
        """One caption per sample: a random one in training, the first otherwise."""
        if not self.training:
            return [caps[0] for caps in captions]
        return [caps[int(torch.randint(len(caps), ()))] for caps in captions]

    def losses(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        x = to_model_range(batch["image"], self.hparams.image_size)
        if self.hparams.stage == "vq":
            out = self.vq(x)
            rec, commit = F.l1_loss(out.sample, x), out.commit_loss.mean()
            return {"loss": rec + self.hparams.commit_weight * commit, "rec": rec, "commit": commit}
        with torch.no_grad():
            latents = self.vq.encode(x).latents  # b c h w
        if self.latent_scale == 0:  # the first batch fixes the scale (also on resume: it is a buffer)
            std = latents.float().std()
            if self._trainer is not None:
                std = self.trainer.strategy.reduce(std, reduce_op="mean")
            self.latent_scale.fill_(1 / std)
        context = self.captions(self._caption_batch(batch["captions"]))
        loss = diffusion_loss(
            self.unet,
            self.noise_scheduler,
            latents * self.latent_scale,
            generator,
            encoder_hidden_states=context,
        )
        return {"loss": loss}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.losses(batch)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True)
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        losses = self.losses(batch, torch.Generator(self.device).manual_seed(batch_idx))
        self.log_dict(
            {f"val/{k}": v for k, v in losses.items()}, sync_dist=True, batch_size=len(batch["key"])
        )

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_warmup_cosine(self, hp.lr, hp.min_lr, hp.warmup_fraction, hp.weight_decay)

    def export(self, directory: str | Path) -> Path:
        """Write what this stage trained as a diffusers directory (see the class docstring)."""
        root = Path(directory)
        if self.hparams.stage == "vq":
            self.vq.save_pretrained(root / "vqvae")
            return root
        if self.latent_scale == 0:
            raise RuntimeError("export before any batch was seen: the latent scale is not set")
        self.vq.register_to_config(scaling_factor=float(self.latent_scale))
        return save_ldm(LDM(self.vq, self.unet, self.noise_scheduler), root)

    def on_train_end(self) -> None:
        if self.trainer.fast_dev_run:  # a smoke test must not replace a trained export
            rank_zero_info(f"fast_dev_run: nothing exported to {self.hparams.export_dir}")
        elif self.hparams.export_dir and self.trainer.is_global_zero:
            rank_zero_info(
                f"exported the {self.hparams.stage} stage to {self.export(self.hparams.export_dir)}"
            )
