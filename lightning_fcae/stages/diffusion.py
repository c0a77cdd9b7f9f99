"""Stage 3: latent diffusion conditioned on fMRI (paper section 2.2, eq. 4-5; settings in 3.2.2).

:class:`LDMFinetune` fine-tunes a pretrained LDM on ``(fMRI, image)`` pairs: the fMRI encoder (with the
token map that puts its output on CLIP's token grid) and the condition encoder train, and inside the UNet
only the cross-attention layers and the time-embedding projection do; the VQ autoencoder and the rest of
the UNet stay frozen. The loss is the epsilon-prediction MSE of eq. 5. The condition path::

    fMRI  b V  -> encoder + token map (FMRIAligner)  -> b T D   CLIP-space tokens (stage 2 aligned them)
               -> ClipCondition (the LDM's own, or new) -> context b 1+T C (cross-attention), pooled b D
                                                          (time embedding)

The synthetic benchmark's stand-in LDM (:mod:`lightning_fcae.stages.ldm_pretrain`) is pretrained on CLIP
features through the same :class:`ClipCondition`, so stage 3 starts from a condition the UNet already
reads; a CompVis LDM has none, and fine-tuning starts a fresh one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from einops import rearrange
from lightning.pytorch.utilities import rank_zero_info

from ..models.align import FMRIAligner
from ..models.condition import ClipCondition
from ..models.ldm import (
    LDMConfigName,
    add_time_conditioning,
    build_ldm,
    freeze_for_finetuning,
    load_ldm,
    to_model_range,
    vq_downsampling,
)
from ..models.sizes import model_size
from ..models.vit import FMRIEncoder
from ..sampling import sample_images
from .optim import adamw_warmup_cosine
from .pretrain import STAGE2_WRITER, ModelSize, load_pretrained, require_checkpoint
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


def load_fmri_aligner(
    path: str, clip_tokens: int, clip_dim: int, embed_rank: int = 8, pinned: bool = True
) -> FMRIAligner:
    """The fMRI side of stage 3 from a stage-2 or stage-1 checkpoint, on CPU: encoder + token map onto a
    ``clip_tokens x clip_dim`` grid, without the fCAE regressor (stage 3 encodes every patch).

    A stage-2 checkpoint brings the token map it trained: on that grid, which must be the requested one
    when it is ``pinned`` (by an LDM pretrained on that CLIP). A stage-1 encoder (MinD-Vis, vis-dec,
    Table 3's F row) gets a new, randomly initialised token map that stage 3 trains.
    """
    hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    if "stage1" not in hparams:
        return FMRIAligner(load_pretrained(path).encoder, None, clip_tokens, clip_dim, embed_rank)
    from .align import load_aligned  # imports open_clip

    aligner = load_aligned(path)
    grid = (hparams["clip_tokens"], hparams["clip_dim"])
    if pinned and grid != (clip_tokens, clip_dim):
        raise ValueError(
            f"{path} aligns the fMRI encoder to {grid[0]} x {grid[1]} CLIP tokens, the LDM's condition takes "
            f"{clip_tokens} x {clip_dim}: stage 2 and the LDM must use the same CLIP model"
        )
    aligner.regressor = None
    return aligner


def token_grid(aligner: FMRIAligner) -> tuple[int, int]:
    """(tokens, width) of the CLIP grid an aligner's token map writes."""
    return aligner.mapper.token_map.out_features, aligner.mapper.proj.out_features


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


class LDMFinetune(RankSeededModule):
    """The paper's stage 3: ``E || eps - eps_theta(z_t, t, tau(fMRI)) ||^2`` with tau = fMRI encoder + token
    map (:class:`FMRIAligner`) + condition encoder (:class:`ClipCondition`).

    Trainable: the fMRI encoder and its token map, the condition encoder (incl. its null condition), and
    in the UNet every transformer block's ``attn2`` + ``norm2`` and the ``class_embedding``
    (:func:`freeze_for_finetuning`). Frozen: the VQ autoencoder (kept in eval mode) and all other UNet
    weights.

    Args:
        num_voxels: padded voxel count (linked from the DataModule by the CLI).
        pretrained_ldm: diffusers LDM directory (:func:`load_ldm`); None builds a random ``ldm_config``
            (tests only: fine-tuning a random UNet's cross-attention is not the method).
        encoder_ckpt: stage-2 (aligned: its token map comes along) or stage-1 checkpoint (a new token map)
            (:func:`load_fmri_aligner`); None builds a fresh encoder of size ``encoder_size``.
        clip_tokens / clip_dim: the CLIP token grid T x D (ViT-B-32: 50 x 512) when neither the LDM (one
            pretrained on CLIP features fixes it) nor a stage-2 checkpoint (its token map's) does.
        embed_rank: width of a new token map's per-patch readout (see ``TokenMapper``).
        text_slot: also feed the fMRI embedding (token 0) into the condition's caption slot; off: that slot
            holds its null value, as in the LDM's image-only pretraining samples.
        cond_drop: probability of the null condition in training (classifier-free guidance).
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
        clip_tokens: int = 50,
        clip_dim: int = 512,
        embed_rank: int = 8,
        text_slot: bool = False,
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
        # the CLIP grid: the LDM's when it was pretrained on CLIP features, else stage 2's, else the args
        pinned = ldm.condition is not None
        if pinned:
            clip_tokens, clip_dim = ldm.condition.config.clip_tokens, ldm.condition.config.clip_dim
        if encoder_ckpt:
            require_checkpoint(encoder_ckpt, "encoder_ckpt", STAGE2_WRITER)
            self.aligner = load_fmri_aligner(encoder_ckpt, clip_tokens, clip_dim, embed_rank, pinned)
        else:
            encoder = FMRIEncoder(num_voxels, model_size(encoder_size)[0])
            self.aligner = FMRIAligner(encoder, None, clip_tokens, clip_dim, embed_rank)
        context_dim = ldm.unet.config.cross_attention_dim
        self.conditioner = ldm.condition or ClipCondition(*token_grid(self.aligner), context_dim)
        dim = self.conditioner.config.clip_dim
        encoder = self.aligner.encoder
        if encoder.num_patches * encoder.patch_size != num_voxels:
            raise ValueError(
                f"the fMRI encoder takes {encoder.num_patches * encoder.patch_size} voxels, the data "
                f"has {num_voxels}: use the subjects and patch size the encoder was pretrained with"
            )
        self.unet = add_time_conditioning(ldm.unet, dim)
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
        """``fmri [b, V]`` -> cross-attention context ``[b, 1+T, C]`` and pooled ``[b, D]``; ``drop`` (bool
        ``[b]``) replaces a sample's condition by the null one."""
        tokens = self.aligner(fmri)  # b T D: centred CLIP-space directions
        keep = None if drop is None else ~drop
        text = tokens[:, 0] if self.hparams.text_slot else None
        return self.conditioner(tokens, text, keep_image=keep, keep_text=keep, centred=True)

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
        self.log(
            "val/condition_gain_pct", 100 * (loss_shuffled - loss) / loss, sync_dist=True, batch_size=size
        )

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
            "encoder": sum(p.numel() for p in self.aligner.encoder.parameters()),
            "token map": sum(p.numel() for p in self.aligner.mapper.parameters()),
            "condition": sum(p.numel() for p in self.conditioner.parameters()),
            "unet (trainable)": sum(p.numel() for p in self.unet.parameters() if p.requires_grad),
            "unet (frozen)": sum(p.numel() for p in self.unet.parameters() if not p.requires_grad),
            "vq (frozen)": sum(p.numel() for p in self.vq.parameters()),
        }
        rank_zero_info(
            "LDMFinetune parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items())
        )
