"""Stage 2: multimodal alignment of the stage-1 encoder with a frozen CLIP (paper eq. 2-3).

``loss = use_image * cos(cat(Z_v, Z_m) mapped, CLIP image tokens) + use_text * InfoNCE(Z, T)`` where
``T`` is the mean CLIP text embedding of a sample's captions. The flags and the stage-1 checkpoint
type give every row of the paper's Table 3 (F+I, F+T, F+I+T; fCAE or MAE). Only the fMRI side
trains; the frozen CLIP's features come precomputed with the batch (``clip_features: cache``, the
default: :mod:`lightning_fcae.stages.clip_features`) or from this module's own copy of CLIP (``live``).

Two options beyond the paper, each one line in a config (docs/method.md): ``linear_path: ridge`` adds a
per-subject linear map from voxels that starts as the ridge yardstick (:mod:`.linear_path`), and
``image_contrastive`` adds a contrastive term between the fMRI embedding and CLIP's image embedding.
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from open_clip.loss import ClipLoss
from torch import nn

from ..metrics.identification import NWayIdentification
from ..models import FCAE, MAE, model_size
from ..models.align import FMRIAligner, soft_clip_loss, token_cosine_loss
from ..models.clip import resolve_clip_grid
from ..models.factory import build_model, load_model, model_entry
from .chain import STAGE1_WRITER, require_checkpoint
from .clip_features import batch_clip_features, prepare_clip_features, stream_clip_features, train_means
from .linear_path import LinearPathError, fit_linear_path
from .optim import adamw_warmup_cosine
from .records import RecordsModels
from .seeding import RankSeededModule


class FCAEAlign(RecordsModels, RankSeededModule):
    """Aligns the stage-1 encoder (+ regressor) to frozen CLIP image tokens and caption embeddings.

    Args:
        num_voxels: padded voxel count (linked from the DataModule by the CLI).
        encoder_ckpt: a FCAEPretrain/MAEPretrain/DCMAEPretrain checkpoint (the decoder is dropped). None starts from
            a random ``encoder_kind``/``encoder_size`` model: the "untrained encoder" control.
        clip_tokens / clip_dim: CLIP's image-token grid, T x D (ViT-B-32: 50 x 512); unset, they follow
            from ``clip_model``'s architecture.
        embed_rank: per-patch width of the fMRI embedding's flattened readout (``TokenMapper``; 0: off).
        use_image / use_text: the cosine image-token loss and the text contrastive loss.
        embed_weight: the share of token 0 (the fMRI embedding) in the cosine loss, the patch tokens sharing
            the rest; None weighs every token alike (1/T each). See ``token_cosine_loss``.
        mask_ratio: patches masked in training (the regressor predicts them); evaluation sees all.
        lr / min_lr / warmup_fraction / weight_decay: AdamW, warmup + cosine (paper: 5e-4, 0.05).
        n_way: identification ways for ``val/top1_<n>way`` (MinD-Vis: 50); 2-way is logged too.
        center_targets: subtract the training-set mean CLIP image tokens, image embedding and caption
            embedding from the targets (and from the identification candidates); see docs/method.md.
        clip_model / clip_pretrained: the frozen CLIP (an open_clip config name; a local checkpoint file or an
            open_clip tag, online only). None: the batches must bring the features themselves.
        clip_features: ``cache`` computes CLIP's features of the dataset once, into
            ``data_dir/features/`` (a progress bar on first use), and streams them with each batch;
            ``live`` runs CLIP on every batch (needs the data's images; targets are not centred).
        linear_path: ``ridge`` adds a per-subject linear map from voxels to the tokens, set to the ridge
            fitted on train (penalty chosen on val) when training starts, the deep path's output layers
            starting at zero: step 0 predicts what the ridge predicts. ``none``: the paper's model.
        linear_rank: principal directions of the CLIP tokens the linear path maps to.
        linear_lr: the linear path's learning rate (its weights are ridge solutions, orders of magnitude
            smaller than a network's; None: ``lr``).
        image_contrastive: a contrastive term between the fMRI embedding and the (centred) CLIP image
            embedding beside the paper's cosine: ``infonce`` (CLIP's, with the text term's temperature)
            or ``softclip`` (MindEye's: targets softened by CLIP's own image-image similarities).
        stage1: the stage-1 architecture, recorded in checkpoints by this module; leave unset.
    """

    def __init__(
        self,
        num_voxels: int,
        encoder_ckpt: str | None = None,
        encoder_kind: Literal["fcae", "mae"] = "fcae",
        encoder_size: str = "tiny",
        clip_tokens: int | None = None,
        clip_dim: int | None = None,
        embed_rank: int = 8,
        use_image: bool = True,
        use_text: bool = True,
        embed_weight: float | None = 0.5,
        mask_ratio: float = 0.5,
        lr: float = 5e-4,
        min_lr: float = 1e-5,
        warmup_fraction: float = 0.05,
        weight_decay: float = 0.05,
        n_way: int = 50,
        center_targets: bool = True,
        clip_model: str | None = None,
        clip_pretrained: str | None = None,
        clip_features: Literal["cache", "live"] = "cache",
        linear_path: Literal["none", "ridge"] = "none",
        linear_rank: int = 128,
        linear_lr: float | None = None,
        image_contrastive: Literal["none", "infonce", "softclip"] = "none",
        stage1: dict | None = None,
    ):
        super().__init__()
        if not (use_image or use_text):
            raise ValueError(
                "use_image and use_text are both off: stage 2 would train nothing (row F skips it)"
            )
        if embed_weight is not None and not 0.0 <= embed_weight <= 1.0:
            raise ValueError(
                f"embed_weight must be in [0, 1] or None (every token alike), got {embed_weight}"
            )
        if stage1 is not None:  # restoring a stage-2 checkpoint: weights come with its state_dict
            model = build_model(stage1)
        elif encoder_ckpt is not None:
            require_checkpoint(encoder_ckpt, "encoder_ckpt", STAGE1_WRITER)
            model = load_model(encoder_ckpt, "model")
        else:
            encoder, regressor, decoder = model_size(encoder_size)
            if encoder_kind == "fcae":
                model = FCAE(num_voxels, encoder, regressor, decoder)
            else:
                model = MAE(num_voxels, encoder, decoder)
        if model.encoder.model_args["num_voxels"] != num_voxels:
            raise ValueError(
                f"{encoder_ckpt}: the encoder was trained on {model.encoder.model_args['num_voxels']} padded "
                f"voxels, the data has {num_voxels}; use the same subjects and patch size as stage 1"
            )
        clip_tokens, clip_dim = resolve_clip_grid(clip_model, clip_tokens, clip_dim)
        self.save_hyperparameters()
        self.hparams.update(clip_tokens=clip_tokens, clip_dim=clip_dim)  # saved resolved
        self.hparams.stage1 = model_entry(model)  # a resumed run rebuilds the same architecture
        self.aligner = FMRIAligner.from_pretrained(model, clip_tokens, clip_dim, embed_rank)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        # training-set means of the CLIP targets, set in setup() from the feature cache; saved with the model
        self.register_buffer("clip_token_mean", torch.zeros(clip_tokens, clip_dim))
        self.register_buffer("clip_embed_mean", torch.zeros(clip_dim))
        self.register_buffer("clip_text_mean", torch.zeros(clip_dim))
        self.clip = None
        if clip_model is not None and clip_features == "live":
            from ..models.clip import load_clip

            self.clip = load_clip(clip_model, clip_pretrained)
        self.strict_loading = False  # checkpoints leave the frozen CLIP out
        self.contrastive = ClipLoss()
        self.identification = nn.ModuleDict()  # filled in setup(), per split x subject x ways
        # the step-0 model's val scores when known without training (the ridge-set linear path)
        self.initial_val_scores: dict[str, float] = {}
        self.register_buffer("subject_rows", torch.zeros(0, dtype=torch.long), persistent=False)

    recorded_models = ("aligner",)

    @property
    def streams_clip_features(self) -> bool:
        return self.hparams.clip_model is not None and self.hparams.clip_features == "cache"

    def prepare_data(self) -> None:
        """Builds the CLIP feature cache when it is missing or stale (one process per node)."""
        if self.streams_clip_features:
            prepare_clip_features(self.trainer, self.hparams.clip_model, self.hparams.clip_pretrained)

    def setup(self, stage: str) -> None:
        """Identification is per subject: NSD's shared test images recur across subjects, and an identical
        image among the distractors would make identification impossible."""
        data = self.trainer.datamodule
        self.subject_names = list(data.subjects) if data is not None else ["all"]
        cache = None
        if self.streams_clip_features:
            cache = stream_clip_features(self.trainer, self.hparams.clip_model, self.hparams.clip_pretrained)
        if self.hparams.center_targets and stage == "fit" and cache is not None:
            means = train_means(cache)  # the grid of clip_model, as the module's (resolve_clip_grid)
            self.clip_token_mean.copy_(means["image_tokens"])
            self.clip_embed_mean.copy_(means["image_embed"])
            self.clip_text_mean.copy_(means["text_embed"])
        elif self.hparams.center_targets and stage == "fit":
            rank_zero_warn(
                "center_targets needs the CLIP feature cache (clip_features: cache); targets stay raw"
            )
        if self.hparams.linear_path == "ridge":
            self.setup_linear_path(stage, cache)
        ways = sorted({2, self.hparams.n_way})
        for split in ("val", "test"):
            for subject in range(len(self.subject_names)):
                for n in ways:
                    self.identification[f"{split}_{subject}_{n}"] = NWayIdentification(n).to(self.device)
        world = self.trainer.world_size
        if world > 1:  # negatives from every rank, as open_clip trains
            self.contrastive = ClipLoss(
                local_loss=True, gather_with_grad=True, rank=self.global_rank, world_size=world
            )

    def setup_linear_path(self, stage: str, cache) -> None:
        """Attach the linear path for the data's subjects (zero: a restored checkpoint fills it), and set it
        to the ridge when a fit starts from scratch."""
        data = self.trainer.datamodule
        if data is None or not hasattr(data, "subjects"):
            raise LinearPathError("linear_path: ridge fits on the trainer's NSDDataModule; there is none")
        if self.aligner.linear is None:
            self.aligner.add_linear_path(list(data.subjects), self.hparams.linear_rank)
        self.subject_rows = self.aligner.linear.subject_indices(list(data.subjects)).to(self.device)
        if stage == "fit" and self.trainer.ckpt_path is None and not self.initial_val_scores:
            if cache is None:
                raise LinearPathError(
                    "linear_path: ridge fits on the CLIP feature cache (clip_features: cache)"
                )
            self.initial_val_scores = fit_linear_path(
                self.aligner.linear, data, self.clip_token_mean, self.clip_embed_mean, self.hparams.n_way
            )
            self.aligner.linear.to(self.device)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A stage-2 checkpoint with a linear path restores into a module that has none yet (``load_from_
        checkpoint`` runs no ``setup``): build it from the recorded model."""
        recorded = checkpoint.get("models", {}).get("aligner", {}).get("args", {}).get("linear")
        if recorded and self.aligner.linear is None:
            self.aligner.add_linear_path(recorded["subjects"], recorded["rank"])

    def subjects_of(self, batch: dict) -> torch.Tensor | None:
        """Each row's index into the linear path's subjects (None without a linear path)."""
        if self.aligner.linear is None:
            return None
        if len(self.subject_rows) == 0:  # no setup (a module used outside a trainer): the path's own order
            return batch["subject"]
        return self.subject_rows[batch["subject"]]

    def clip_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image tokens ``[b, T, D]``, image embedding ``[b, D]``, mean text embedding ``[b, D]``)."""
        cached = batch_clip_features(batch)
        if cached is not None:
            tokens, image, text = cached
        elif self.clip is not None:
            with torch.no_grad():
                tokens = self.clip.image_tokens(batch["image"])
                image, text = self.clip.image_embed(batch["image"]), self.clip.text_embed(batch["captions"])
        else:
            raise ValueError(
                "the batch has no CLIP features: set model.init_args.clip_model and clip_pretrained (and "
                "train with NSDDataModule), or give batches that carry them"
            )
        if tokens.shape[1:] != (self.hparams.clip_tokens, self.hparams.clip_dim):
            raise ValueError(
                f"CLIP image tokens are {tuple(tokens.shape[1:])}, the model expects "
                f"({self.hparams.clip_tokens}, {self.hparams.clip_dim}): set model.init_args.clip_tokens/clip_dim"
            )
        if self.hparams.center_targets:
            tokens, image = tokens - self.clip_token_mean, image - self.clip_embed_mean
            text = text - self.clip_text_mean
        return tokens, image, text

    def losses(
        self, batch: dict, mask_ratio: float
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        clip_tokens, clip_image, clip_text = self.clip_features(batch)
        tokens = self.aligner(batch["fmri"], mask_ratio, subject=self.subjects_of(batch))  # b T D
        embedding = FMRIAligner.embedding(tokens)  # b D
        terms = {}
        if self.hparams.use_image:
            terms["cos"] = token_cosine_loss(tokens, clip_tokens, self.hparams.embed_weight)
        if self.hparams.image_contrastive != "none":
            image = F.normalize(clip_image.float(), dim=-1)
            scale = self.logit_scale.exp()
            if self.hparams.image_contrastive == "infonce":
                terms["image_contrastive"] = self.contrastive(embedding, image, scale)
            else:
                terms["image_contrastive"] = soft_clip_loss(embedding, image, scale)
        if self.hparams.use_text:
            text = F.normalize(clip_text.float(), dim=-1)
            terms["contrastive"] = self.contrastive(embedding, text, self.logit_scale.exp())
        terms["loss"] = sum(terms.values())
        return terms, embedding, clip_image

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms, _, _ = self.losses(batch, self.hparams.mask_ratio)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=True)
        return terms["loss"]

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        with torch.no_grad():  # as CLIP: a temperature below 1/100 destabilises training
            self.logit_scale.clamp_(0, math.log(100))

    def _evaluate(self, batch: dict, split: str) -> None:
        terms, embedding, clip_image = self.losses(batch, mask_ratio=0.0)
        self.log_dict(
            {f"{split}/{k}": v for k, v in terms.items()}, sync_dist=True, batch_size=len(batch["key"])
        )
        for subject in batch["subject"].unique().tolist():
            rows = batch["subject"] == subject
            for n in sorted({2, self.hparams.n_way}):
                self.identification[f"{split}_{subject}_{n}"].update(
                    embedding[rows], clip_image[rows].float()
                )

    def _log_identification(self, split: str) -> None:
        """``<split>/top1_<n>way`` (mean over subjects) and per subject; skipped with too few samples."""
        for n in sorted({2, self.hparams.n_way}):
            scores = {}
            for subject, name in enumerate(self.subject_names):
                metric = self.identification[f"{split}_{subject}_{n}"]
                # fewer samples than ways raises ValueError, the same on every rank (compute() syncs)
                with contextlib.suppress(ValueError):
                    scores[name] = metric.compute()
                metric.reset()
            for name, value in scores.items():
                self.log(f"{split}/top1_{n}way_{name}", value)
            if scores:
                self.log(f"{split}/top1_{n}way", torch.stack(list(scores.values())).mean(), prog_bar=n != 2)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_identification("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_identification("test")

    def on_train_start(self) -> None:
        """The step-0 model's val scores, when known without training, go to the loggers at step 0: every
        val curve then starts where the ridge-set linear path starts."""
        if self.initial_val_scores and self.trainer.global_step == 0:
            scores = ", ".join(f"{k} {v:.4f}" for k, v in self.initial_val_scores.items())
            rank_zero_info(f"step 0 (the ridge-set linear path): {scores}")
            for logger in self.loggers:
                logger.log_metrics(dict(self.initial_val_scores), step=0)

    @torch.no_grad()
    def latents(self, fmri: torch.Tensor) -> torch.Tensor:
        """Patch latents, all patches visible ``[b, n, d]`` (for the linear probe)."""
        return self.aligner.latents(fmri)

    def configure_optimizers(self):
        """Aligner and temperature (no decay: 0-d); the frozen CLIP has no trainable parameters."""
        hp = self.hparams
        scales = {"aligner.linear.": hp.linear_lr / hp.lr} if hp.linear_lr is not None else None
        return adamw_warmup_cosine(self, hp.lr, hp.min_lr, hp.warmup_fraction, hp.weight_decay, scales)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("clip.")
        }
