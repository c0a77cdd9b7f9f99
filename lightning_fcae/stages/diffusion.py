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

import os
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info

from ..inference.sampling import sample_conditioned
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
from ..models.ldm_reference import ldm_files, ldm_reference
from ..models.linear_path import LowLevelDecoder
from ..models.sizes import model_size
from ..models.vit import FMRIEncoder
from .chain import STAGE2_WRITER, require_checkpoint
from .diffusion_loss import diffusion_loss
from .linear_path import LinearPathError, fit_lowlevel
from .optim import adamw_warmup_cosine
from .pretrain import ModelSize
from .records import RecordsModels
from .seeding import RankSeededModule
from .stage3_aligner import stage3_aligner, token_grid


def fmri_preprocessing(stats: dict, num_voxels: int) -> dict:
    """The data's per-subject z-scoring (training statistics) and the padded length, as tensors: what a
    reconstruction pipeline needs to take a subject's raw voxels."""
    subjects = {
        name: {
            "mean": torch.as_tensor(mean, dtype=torch.float32),
            "std": torch.as_tensor(std, dtype=torch.float32),
        }
        for name, (mean, std) in stats.items()
    }
    return {"num_voxels": num_voxels, "subjects": subjects}


class LDMFinetune(RecordsModels, RankSeededModule):
    """The paper's stage 3: ``E || eps - eps_theta(z_t, t, tau(fMRI)) ||^2`` with tau = fMRI encoder + token
    map (:class:`FMRIAligner`) + condition encoder (:class:`ClipCondition`).

    Trainable: the fMRI encoder and its token map, the condition encoder (incl. its null condition), and
    in the UNet every transformer block's ``attn2`` + ``norm2`` and the ``class_embedding``
    (:func:`freeze_for_finetuning`). Frozen: the VQ autoencoder (kept in eval mode) and all other UNet
    weights.

    Checkpoints hold what trains, not the frozen weights again: with a ``pretrained_ldm`` they record
    that folder (path, path relative to the checkpoint folder, content sha256, each file's size and mtime:
    :func:`ldm_reference`) under ``checkpoint["ldm"]``
    and leave its frozen UNet and VQ weights out (at paper size ~3 GB less per checkpoint). They also
    record the models (``models/factory.py``) and the data's per-subject normalisation
    (``checkpoint["fmri_preprocessing"]``), so that the reconstruction pipeline
    (:mod:`lightning_fcae.inference.reconstruction_pipeline`) rebuilds everything from the checkpoint and
    the LDM.

    Args:
        num_voxels: padded voxel count (linked from the DataModule by the CLI).
        pretrained_ldm: diffusers LDM directory (:func:`load_ldm`); None builds a random ``ldm_config``
            (tests only: fine-tuning a random UNet's cross-attention is not the method).
        encoder_ckpt: stage-2 (aligned: its token map comes along) or stage-1 checkpoint (a new token map)
            (:func:`stage3_aligner`); None builds a fresh encoder of size ``encoder_size``.
        clip_tokens / clip_dim: the CLIP token grid T x D (ViT-B-32: 50 x 512) when neither the LDM (one
            pretrained on CLIP features fixes it) nor a stage-2 checkpoint (its token map's) does.
        embed_rank: width of a new token map's per-patch readout (see ``TokenMapper``).
        text_slot: also feed the fMRI embedding (token 0) into the condition's caption slot; off: that slot
            holds its null value, as in the LDM's image-only pretraining samples.
        cond_drop: probability of the null condition in training (classifier-free guidance).
        lr / min_lr / warmup_fraction / weight_decay: AdamW; min_lr None keeps lr constant (MinD-Vis).
        image_size: resize images to this side before the VQ (None: as the DataModule delivers them).
        sample_steps / guidance_scale: defaults of :meth:`reconstruct` and ``predict_step``.
        lowlevel: ``ridge`` fits, when a fit starts, the ridge yardstick's voxels -> pixels map per subject
            (train, penalty by val PixCorr) and keeps it in the checkpoint (:class:`LowLevelDecoder`, not
            trained): the image ``reconstruct --init lowlevel`` starts img2img from. Beyond the paper.
        lowlevel_rank / lowlevel_size: its principal directions of the training images, and its image side
            (None: the reconstructions' side, at most 64; img2img resizes it to the LDM's).
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
        lowlevel: Literal["none", "ridge"] = "none",
        lowlevel_rank: int = 256,
        lowlevel_size: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        ldm = load_ldm(pretrained_ldm) if pretrained_ldm else build_ldm(ldm_config)
        # the LDM folder as its weights were read; its reference (sha256) is made when first needed
        self.ldm_folder = None if not pretrained_ldm else Path(pretrained_ldm).resolve()
        self.ldm_folder_files = None if not pretrained_ldm else ldm_files(self.ldm_folder)
        self._ldm_reference: dict | None = None
        # the CLIP grid: the LDM's when it was pretrained on CLIP features, else stage 2's, else the args
        pinned = ldm.condition is not None
        if pinned:
            clip_tokens, clip_dim = ldm.condition.config.clip_tokens, ldm.condition.config.clip_dim
        if encoder_ckpt:
            require_checkpoint(encoder_ckpt, "encoder_ckpt", STAGE2_WRITER)
            self.aligner = stage3_aligner(encoder_ckpt, clip_tokens, clip_dim, embed_rank, pinned)
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
        # data subject index -> linear-path subject index (set in setup when the aligner has a linear path)
        self.register_buffer("subject_rows", torch.zeros(0, dtype=torch.long), persistent=False)
        self.lowlevel: LowLevelDecoder | None = None  # built in setup (lowlevel: ridge)

    recorded_models = ("aligner", "conditioner", "lowlevel")

    def frozen_keys(self) -> set[str]:
        """State-dict keys of the frozen UNet and VQ weights (those a checkpoint leaves to the LDM folder)."""
        trainable = {f"unet.{name}" for name in self.trainable_unet_parameters}
        return {
            k
            for k in self.state_dict()
            if k.startswith("vq.") or (k.startswith("unet.") and k not in trainable)
        }

    def ldm_record(self, recorded: dict | None = None) -> dict | None:
        """The reference (:func:`ldm_reference`) of the LDM folder the frozen weights came from; None for
        a random LDM. Made once per process, when first needed: resuming, against the checkpoint's record
        (an unchanged folder is not hashed again), or else at the first checkpoint save (the folder is
        hashed). A folder that changed since its weights were read is refused: the record would name
        other weights than those this run holds."""
        if self.ldm_folder is None:
            return None
        if self._ldm_reference is None:
            reference = ldm_reference(self.ldm_folder, recorded)
            if reference["files"] != self.ldm_folder_files:
                raise ValueError(
                    f"the LDM folder {self.ldm_folder} changed (files touched, added or removed) after this "
                    "stage-3 run read its weights from it: start the run again"
                )
            self._ldm_reference = reference
        return self._ldm_reference

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        data = self.trainer.datamodule if self._trainer is not None else None
        if data is not None and hasattr(data, "norm_stats"):
            checkpoint["fmri_preprocessing"] = fmri_preprocessing(data.norm_stats(), self.hparams.num_voxels)
        reference = self.ldm_record()
        if reference is None:  # a random LDM (tests): nothing to point at, keep every weight
            return
        # where this file will lie: the checkpoint callback's folder
        callback = self._trainer and self.trainer.checkpoint_callback
        root = Path(callback.dirpath) if callback and callback.dirpath else Path.cwd()
        checkpoint["ldm"] = {**reference, "relative": os.path.relpath(reference["path"], root)}
        frozen = self.frozen_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resuming: the frozen weights come from the LDM folder this module was built from, which must
        be the one the checkpoint was trained on."""
        self.on_load_checkpoint_lowlevel(checkpoint)
        recorded = checkpoint.get("ldm")
        if recorded is None:
            return
        reference = self.ldm_record(recorded)
        if reference is None or recorded["sha256"] != reference["sha256"]:
            raise ValueError(
                f"this stage-3 checkpoint was trained on the LDM {recorded['path']} (sha256 "
                f"{recorded['sha256'][:12]}), the run's pretrained_ldm is "
                f"{reference and reference['path']}: resume with that LDM"
            )
        own = self.state_dict()
        checkpoint["state_dict"] = {**{k: own[k] for k in self.frozen_keys()}, **checkpoint["state_dict"]}

    def train(self, mode: bool = True):
        super().train(mode)
        self.vq.eval()  # frozen: never in train mode
        return self

    @property
    def latent_size(self) -> int:
        size = self.hparams.image_size
        return size // vq_downsampling(self.vq) if size else self.unet.config.sample_size

    def setup(self, stage: str) -> None:
        """A stage-2 aligner with a linear path reads each row's subject: map the data's subject indices
        onto the path's (by name: the data may hold fewer subjects, in another order). With ``lowlevel:
        ridge``, build the low-level decoder for the data's subjects and fit it when a fit starts afresh
        (a resumed or tested checkpoint brings its own)."""
        data = self.trainer.datamodule
        if self.aligner.linear is not None and data is not None and hasattr(data, "subjects"):
            self.subject_rows = self.aligner.linear.subject_indices(list(data.subjects)).to(self.device)
        if self.hparams.lowlevel == "ridge" and self.lowlevel is None:
            if data is None or not hasattr(data, "subjects"):
                raise LinearPathError("lowlevel: ridge fits on the trainer's NSDDataModule; there is none")
            size = self.hparams.lowlevel_size or min(self.hparams.image_size or data.image_size, 64)
            self.lowlevel = LowLevelDecoder(
                list(data.subjects), self.hparams.num_voxels, self.hparams.lowlevel_rank, size
            )
            self.lowlevel.requires_grad_(False)
            if stage == "fit" and self.trainer.ckpt_path is None:
                pixcorr = fit_lowlevel(self.lowlevel.map, data)
                rank_zero_info(f"low-level decoder (ridge voxels -> {size} px): val PixCorr {pixcorr:.3f}")
            self.lowlevel.to(self.device)

    def on_load_checkpoint_lowlevel(self, checkpoint: dict) -> None:
        """``load_from_checkpoint`` runs no ``setup``: build the recorded low-level decoder to load into."""
        recorded = checkpoint.get("models", {}).get("lowlevel")
        if recorded and self.lowlevel is None:
            self.lowlevel = LowLevelDecoder(**recorded["args"]).requires_grad_(False)

    def subjects_of(self, subject: torch.Tensor | None) -> torch.Tensor | None:
        """The linear path's subject index of each row (``subject``: the DataModule's); None without a path."""
        if self.aligner.linear is None:
            return None
        if subject is None:
            raise ValueError(
                f"this model's fMRI encoder has a per-subject linear path ({self.aligner.linear.subjects}): "
                "pass each row's subject"
            )
        return self.subject_rows[subject] if len(self.subject_rows) else subject

    def condition(
        self, fmri: torch.Tensor, drop: torch.Tensor | None = None, subject: torch.Tensor | None = None
    ):
        """``fmri [b, V]`` -> cross-attention context ``[b, 1+T, C]`` and pooled ``[b, D]``; ``drop`` (bool
        ``[b]``) replaces a sample's condition by the null one; ``subject [b]``: the DataModule's subject
        index of each row (needed by an encoder with a linear path)."""
        tokens = self.aligner(fmri, subject=self.subjects_of(subject))  # b T D: centred CLIP-space directions
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
        tokens, pooled = self.condition(batch["fmri"], drop, batch.get("subject"))
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
        if "subject" in batch:  # the fMRI keeps its own subject (a linear path reads it)
            shuffled["subject"] = batch["subject"].roll(1, dims=0)
        loss_shuffled = self.loss(shuffled, torch.Generator(self.device).manual_seed(batch_idx))
        size = len(batch["key"])
        self.log("val/loss", loss, sync_dist=True, batch_size=size)
        self.log("val/condition_gain", loss_shuffled - loss, sync_dist=True, batch_size=size)
        self.log(
            "val/condition_gain_pct", 100 * (loss_shuffled - loss) / loss, sync_dist=True, batch_size=size
        )

    @torch.no_grad()
    def sample(
        self,
        fmri: torch.Tensor,
        steps: int | None = None,
        guidance: float | None = None,
        samples: int = 1,
        seed: int | list[int] = 0,
        subject: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images decoded from ``fmri [b, V]`` (of the DataModule's subjects ``subject [b]``):
        ``[b, samples, 3, H, W]`` in [0, 1], all in one batch.

        ``seed``: an int seeds one generator for the whole batch; a list of ``b`` seeds gives each fMRI
        row its own generator, from which its ``samples`` images draw in turn, so row i's images depend
        on ``seeds[i]`` only, not on what else is in the batch (up to the kernels' batch-dependent
        rounding).
        """
        if isinstance(seed, int):
            generator = torch.Generator(self.device).manual_seed(seed)
        else:
            generator = [torch.Generator(self.device).manual_seed(s) for s in seed]
        return sample_conditioned(
            *self.condition(fmri, subject=subject),
            self.conditioner,
            self.unet,
            self.vq,
            self.noise_scheduler.config,
            samples=samples,
            steps=steps or self.hparams.sample_steps,
            guidance=self.hparams.guidance_scale if guidance is None else guidance,
            generator=generator,
            latent_size=self.latent_size,
        )

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {
            "key": batch["key"],
            "image": batch.get("image"),
            "recon": self.sample(batch["fmri"], subject=batch.get("subject")),
        }

    def configure_optimizers(self):
        hp = self.hparams
        min_lr = hp.lr if hp.min_lr is None else hp.min_lr
        return adamw_warmup_cosine(self, hp.lr, min_lr, hp.warmup_fraction, hp.weight_decay)

    def on_fit_start(self) -> None:
        counts = {
            "encoder": sum(p.numel() for p in self.aligner.encoder.parameters()),
            "token map": sum(p.numel() for p in self.aligner.mapper.parameters()),
            "linear path": sum(p.numel() for p in (self.aligner.linear or torch.nn.Module()).parameters()),
            "condition": sum(p.numel() for p in self.conditioner.parameters()),
            "unet (trainable)": sum(p.numel() for p in self.unet.parameters() if p.requires_grad),
            "unet (frozen)": sum(p.numel() for p in self.unet.parameters() if not p.requires_grad),
            "vq (frozen)": sum(p.numel() for p in self.vq.parameters()),
        }
        rank_zero_info(
            "LDMFinetune parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items())
        )
