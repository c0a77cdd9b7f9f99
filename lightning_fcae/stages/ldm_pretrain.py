"""Training the synthetic benchmark's stand-in for a pretrained latent diffusion model.

Stage 3 fine-tunes a pretrained LDM; none can be downloaded here, so :class:`LDMPretrain` trains one on
the benchmark's training split in two runs (``part``), and exports a diffusers directory that
:class:`~lightning_fcae.stages.diffusion.LDMFinetune` loads like a converted CompVis model:

* ``vq``: the VQ-f4 autoencoder, loss ``L1(x_rec, x) + commit_weight * commitment`` (diffusers'
  VectorQuantizer loss; no LPIPS or GAN: the synthetic images are flat shapes).
* ``unet``: a UNet on the frozen VQ's latents, conditioned through cross-attention *and* the time
  embedding (the two paths stage 3 uses) on frozen CLIP (stand-in) features, epsilon MSE. The condition
  encoder (:class:`~lightning_fcae.models.condition.ClipCondition`) reads a sample's CLIP image tokens
  and its mean caption embedding, each kept with its own probability and otherwise replaced by a learned
  null: the model samples from image tokens, from a caption, from both or from nothing (classifier-free
  guidance), and stage 3 then drives the image-token slots with the fMRI encoder's prediction of them.

Latents are scaled to unit std by the first batch (LDM's ``scale_by_std``); the scale is exported as the
VQ's ``scaling_factor``. The ``unet`` run streams the frozen CLIP's features from the feature cache
(:mod:`lightning_fcae.stages.clip_features`; ``clip_model``), the same cache and training-split means stage 2
centres its targets with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, VQModel
from lightning.pytorch.utilities import rank_zero_info

from ..files.atomic import save_pretrained
from ..models.condition import ClipCondition
from ..models.ldm import LDM, LDMConfigName, build_unet, build_vq, save_ldm, to_model_range
from ..models.ldm import ldm_config as named_ldm_config
from .clip_features import IMAGE_TOKENS, TEXT_EMBED, prepare_clip_features, stream_clip_features, train_means
from .diffusion_loss import diffusion_loss
from .optim import adamw_warmup_cosine
from .seeding import RankSeededModule

LDMPart = Literal["vq", "unet"]


class LDMPretrain(RankSeededModule):
    """The stand-in LDM, one ``part`` per run (see the module doc).

    Args:
        num_voxels: ignored. The CLI links ``data.num_voxels`` into every model, and on a resume
            (``--ckpt_path``) LightningCLI restores saved hyper-parameters as free keyword arguments, where
            the link then lands whatever the class: so every model takes it.
        part: ``vq`` (the autoencoder) or ``unet`` (the conditional UNet on the frozen VQ).
        ldm_config: named shape (:data:`~lightning_fcae.models.ldm.LDM_CONFIGS`).
        export_dir: the diffusers directory both parts write (``vqvae/``; then ``unet/``, ``scheduler/``,
            ``condition/``); the ``unet`` part reads its VQ from there unless ``vq_path`` is given.
        clip_tokens / clip_dim: the CLIP feature grid T x D of the ``unet`` part (checked against the cache);
            unset, they follow from ``clip_model``'s architecture.
        clip_model / clip_pretrained: the frozen CLIP (stand-in) the ``unet`` part is conditioned on
            (open_clip config name; local checkpoint), cached once beside the shards.
        keep_image / keep_text: probability that a training sample keeps its image tokens / caption
            embedding (each is otherwise the null condition; both absent = unconditional).
        commit_weight: VQ commitment loss weight.
        lr / min_lr / warmup_fraction / weight_decay: AdamW, per-step warmup then cosine decay.
        image_size: resize images to this side (None: as the DataModule delivers them).
    """

    def __init__(
        self,
        num_voxels: int = 0,
        part: LDMPart = "vq",
        ldm_config: LDMConfigName = "demo",
        export_dir: str | None = "checkpoints/ldm/synthetic-small",
        vq_path: str | None = None,
        clip_tokens: int | None = None,
        clip_dim: int | None = None,
        clip_model: str | None = None,
        clip_pretrained: str | None = None,
        keep_image: float = 0.7,
        keep_text: float = 0.5,
        commit_weight: float = 1.0,
        lr: float = 2e-4,
        min_lr: float = 1e-5,
        warmup_fraction: float = 0.02,
        weight_decay: float = 0.0,
        image_size: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if part == "unet":
            from ..models.clip import resolve_clip_grid  # imports open_clip: the unet part only

            clip_tokens, clip_dim = resolve_clip_grid(clip_model, clip_tokens, clip_dim)
            self.hparams.update(clip_tokens=clip_tokens, clip_dim=clip_dim)  # saved resolved
        for name, p in (("keep_image", keep_image), ("keep_text", keep_text)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        config = named_ldm_config(ldm_config)
        if part == "vq":
            self.vq = build_vq(config["vq"])
            return
        path = vq_path or (export_dir and str(Path(export_dir) / "vqvae"))
        if not path or not Path(path).is_dir():
            raise FileNotFoundError(f"part 'unet' needs the VQ from part 'vq': no directory {path!r}")
        self.vq = VQModel.from_pretrained(path).requires_grad_(False).eval()
        self.unet = build_unet(config["unet"], pooled_dim=clip_dim)
        self.condition = ClipCondition(clip_tokens, clip_dim, self.unet.config.cross_attention_dim)
        self.noise_scheduler = DDPMScheduler(**config["scheduler"])
        self.register_buffer("latent_scale", torch.zeros(()))

    def _clip(self) -> tuple[str, str | None]:
        if self.hparams.clip_model is None:
            raise ValueError(
                "LDMPretrain part 'unet' is conditioned on CLIP features: set model.init_args.clip_model and "
                "clip_pretrained (the CLIP stand-in of configs/clip_pretrain.yaml on the synthetic benchmark)"
            )
        return self.hparams.clip_model, self.hparams.clip_pretrained

    def prepare_data(self) -> None:
        """The ``unet`` part builds the CLIP feature cache when it is missing or stale."""
        if self.hparams.part == "unet":
            prepare_clip_features(self.trainer, *self._clip())

    def setup(self, stage: str) -> None:
        """The ``unet`` part streams the CLIP features and centres them on the training split's means, from
        the feature cache (a restored checkpoint brings them with the condition's buffers)."""
        if self.hparams.part != "unet":
            return
        cache = stream_clip_features(self.trainer, *self._clip())
        if stage != "fit":
            return
        if cache is None:
            raise ValueError("LDMPretrain part 'unet' trains on NSDDataModule batches: give the trainer one")
        means = train_means(cache)  # the grid of clip_model, as the condition's (resolve_clip_grid)
        self.condition.set_means(means["image_tokens"], means["text_embed"])

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.part == "unet":
            self.vq.eval()
        return self

    def _keep(self, p: float, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.rand(batch, generator=generator, device=self.device) < p

    def losses(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        x = to_model_range(batch["image"], self.hparams.image_size)
        if self.hparams.part == "vq":
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
        b = len(latents)
        if IMAGE_TOKENS not in batch or TEXT_EMBED not in batch:
            raise ValueError("part 'unet': the batch has no CLIP features (see clip_model)")
        context, pooled = self.condition(
            batch[IMAGE_TOKENS],
            batch[TEXT_EMBED],
            keep_image=self._keep(self.hparams.keep_image, b, generator),
            keep_text=self._keep(self.hparams.keep_text, b, generator),
        )
        loss = diffusion_loss(
            self.unet,
            self.noise_scheduler,
            latents * self.latent_scale,
            generator,
            encoder_hidden_states=context,
            class_labels=pooled,
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
        """Write what this part trained as a diffusers directory (see the module doc)."""
        root = Path(directory)
        if self.hparams.part == "vq":
            save_pretrained(self.vq, root / "vqvae")
            return root
        if self.latent_scale == 0:
            raise RuntimeError("export before any batch was seen: the latent scale is not set")
        self.vq.register_to_config(scaling_factor=float(self.latent_scale))
        return save_ldm(LDM(self.vq, self.unet, self.noise_scheduler, self.condition), root)

    def on_fit_end(self) -> None:
        """Export here, not in ``on_train_end``: Lightning skips that when a resumed checkpoint is already
        at ``max_steps``, so a kill between the last checkpoint and the export would never export."""
        if self.trainer.fast_dev_run:  # a smoke test must not replace a trained export
            rank_zero_info(f"fast_dev_run: nothing exported to {self.hparams.export_dir}")
        elif self.hparams.export_dir and self.trainer.is_global_zero:
            rank_zero_info(f"exported the {self.hparams.part} part to {self.export(self.hparams.export_dir)}")
