"""Stage 1: self-supervised pretraining of the fMRI encoder (fCAE, and the MAE and DC-MAE baselines).

The LightningModules only wire a plain model (``lightning_fcae.models``), its loss, the optimiser
and logging. Their checkpoints are what stage 2 loads through its ``encoder_ckpt`` argument
(``models/factory.py`` rebuilds ``model`` from them); ``fit --ckpt_path`` is for resuming the same stage
only.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info

from ..models import FCAE, MAE, DecoderConfig, EncoderConfig, RegressorConfig, fcae_loss, mae_loss, model_size
from ..models.dcmae import DCMAE, DCMAELossWeights, ImageGuidance, dcmae_loss
from ..models.factory import load_model
from ..models.sizes import config_dicts, config_objects
from .chain import DCMAE_PHASE1_WRITER, require_checkpoint
from .clip_features import IMAGE_TOKENS, prepare_clip_features, stream_clip_features
from .optim import adamw_warmup_cosine
from .records import RecordsModels
from .seeding import RankSeededModule

ModelSize = Literal["tiny", "small", "base", "large"]


class MaskedPretrain(RecordsModels, RankSeededModule):
    """What the stage-1 modules share: sizes, masking, the AdamW warmup + cosine schedule, compile, logging.

    Subclasses add their own arguments and pass these on (``**kwargs``: LightningCLI lists them with each
    subclass), build ``model`` and define :meth:`batch_losses` with their model's loss.

    Args:
        num_voxels: padded voxel count (linked from the DataModule by the CLI).
        size: named size (``tiny``/``small``/``base``/``large``); ``encoder``/``decoder`` (and fCAE's
            ``regressor``) override its parts.
        mask_ratio: fraction of patches masked (paper: 0.75).
        lr / min_lr / warmup_fraction: warmup then cosine (paper: 1.7e-3 -> 1e-4).
        weight_decay: AdamW weight decay (paper: 0.05).
        grad_checkpointing: recompute activations in backward (less memory, ~30% slower).
        compile: ``torch.compile`` the model.
    """

    model: FCAE | MAE | DCMAE
    recorded_models = ("model",)

    def __init__(
        self,
        num_voxels: int,
        size: ModelSize = "small",
        encoder: EncoderConfig | None = None,
        decoder: DecoderConfig | None = None,
        mask_ratio: float = 0.75,
        lr: float = 1.7e-3,
        min_lr: float = 1e-4,
        warmup_fraction: float = 0.05,
        weight_decay: float = 0.05,
        grad_checkpointing: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        # this class's and the subclass's arguments (Lightning collects every __init__ frame of the chain)
        self.save_hyperparameters(ignore=["encoder", "regressor", "decoder"])
        default_encoder, self.default_regressor, default_decoder = model_size(size)
        self.encoder_config, self.decoder_config = encoder or default_encoder, decoder or default_decoder
        self.hparams.update(config_dicts(encoder=self.encoder_config, decoder=self.decoder_config))

    def configure_model(self) -> None:
        if self.hparams.compile:
            self.model.compile()  # in place; a second call (fit then test) is a no-op recompile

    def batch_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The loss terms of a batch (``loss`` is the total), from the model's own loss function."""
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.batch_losses(batch)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True)
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # masks seeded by batch index, on a forked RNG: val/loss compares across epochs, equals what
        # `lightning validate` gives for the same weights, and leaves the training RNG stream untouched
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(batch_idx)
            losses = self.batch_losses(batch)
        self.log_dict(
            {f"val/{k}": v for k, v in losses.items()}, sync_dist=True, batch_size=len(batch["key"])
        )

    @torch.no_grad()
    def latents(self, fmri: torch.Tensor) -> torch.Tensor:
        """The encoder's patch latents over all patches, unmasked: ``[b, n, d]`` (for probes)."""
        return self.model.encoder(fmri)[:, 1:]

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_warmup_cosine(self, hp.lr, hp.min_lr, hp.warmup_fraction, hp.weight_decay)

    def on_fit_start(self) -> None:
        counts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in self.model.parameter_counts().items())
        rank_zero_info(f"{type(self).__name__} parameters: {counts}")


class FCAEPretrain(MaskedPretrain):
    """The paper's stage 1: ``CE(Y_m, discretised X_m) + lam * MSE(Z_m, sg[E(X_m)])``.

    Args:
        num_voxels: padded voxel count (linked from the DataModule by the CLI).
        regressor: the latent context regressor's size (default: ``size``'s).
        lam: weight of the latent alignment loss (paper: 2).
        target: ``ce`` (paper: discretised targets) or ``mse``.
        num_bins / clip: discretisation of z-scored voxels for ``ce``.
    """

    def __init__(
        self,
        num_voxels: int,
        regressor: RegressorConfig | None = None,
        lam: float = 2.0,
        target: Literal["ce", "mse"] = "ce",
        num_bins: int = 32,
        clip: float = 3.0,
        **kwargs,
    ):
        super().__init__(num_voxels, **kwargs)
        regressor = regressor or self.default_regressor
        self.hparams.update(config_dicts(regressor=regressor))
        self.model = FCAE(
            num_voxels,
            self.encoder_config,
            regressor,
            self.decoder_config,
            num_bins,
            clip,
            target,
            self.hparams.grad_checkpointing,
        )

    def batch_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.model(batch["fmri"], self.hparams.mask_ratio)
        return fcae_loss(out, self.model.discretizer, self.hparams.lam)


class MAEPretrain(MaskedPretrain):
    """The MinD-Vis (SC-MBM) baseline: MSE on masked patches, no regressor.

    Args:
        num_voxels: padded voxel count (linked from the DataModule by the CLI).
        norm_pix_loss: normalise each target patch by its own mean/std (MAE's option).
    """

    def __init__(self, num_voxels: int, norm_pix_loss: bool = False, **kwargs):
        super().__init__(num_voxels, **kwargs)
        self.model = self.build_model()

    def build_model(self) -> MAE:
        hp = self.hparams
        return MAE(
            hp.num_voxels, self.encoder_config, self.decoder_config, hp.norm_pix_loss, hp.grad_checkpointing
        )

    def batch_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        return mae_loss(self.model(batch["fmri"], self.hparams.mask_ratio))


class DCMAEPretrain(MAEPretrain):
    """The vis-dec baseline (Sun et al. 2023): the Double-contrastive MAE, and with ``image_guided`` its
    phase 2, where the MAE exchanges cross-attention with frozen image tokens (models/dcmae.py; the loss
    is :func:`~lightning_fcae.models.dcmae.dcmae_loss`). Under DDP the contrastive keys are gathered from
    every rank in training (open_clip ClipLoss, ``local_loss=True, gather_with_grad=True``); validation
    contrasts within the local batch.

    Args:
        num_voxels: padded voxel count (linked from the DataModule by the CLI).
        rec_weight: weight of the masked-patch MSE (vis-dec: 1 in phase 1, 0.25 in phase 2).
        self_contrast_weight / cross_contrast_weight: InfoNCE of the first reconstruction against the
            input / against the reconstruction of a second random masking (vis-dec: 1 and 0.5);
            0 switches a term off (and, for cross, its second forward pass).
        temperature: InfoNCE temperature on cosine similarities (vis-dec: 0.1).
        image_guided: phase 2: the batches carry the frozen CLIP's image tokens (``clip_model``).
        init_ckpt: start from a MAEPretrain/DCMAEPretrain checkpoint (phase 2 from phase 1); its sizes
            replace ``size``/``encoder``/``decoder``. New guidance modules start from scratch.
        clip_tokens / clip_dim: the image tokens, T x D (phase 2; ViT-B-32: 50 x 512); unset, they follow
            from ``clip_model``'s architecture.
        clip_model / clip_pretrained: the frozen CLIP of phase 2 (open_clip config name; local checkpoint
            or open_clip tag); its features are cached once beside the shards and streamed with each batch.
        cross_depth: cross-attention blocks on each side (vis-dec: 3).
        image_decoder_depth: blocks of the image-token decoder (vis-dec: 6); None: the decoder's depth.
        image_mask_ratio: fraction of image tokens masked (vis-dec: 0.5).
        image_recon_weight: weight of the masked image-token MSE (vis-dec: 1.5); 0 drops the image side.
    """

    def __init__(
        self,
        num_voxels: int,
        rec_weight: float = 1.0,
        self_contrast_weight: float = 1.0,
        cross_contrast_weight: float = 0.5,
        temperature: float = 0.1,
        image_guided: bool = False,
        init_ckpt: str | None = None,
        clip_tokens: int | None = None,
        clip_dim: int | None = None,
        clip_model: str | None = None,
        clip_pretrained: str | None = None,
        cross_depth: int = 3,
        image_decoder_depth: int | None = None,
        image_mask_ratio: float = 0.5,
        image_recon_weight: float = 1.5,
        **kwargs,
    ):
        weights = DCMAELossWeights(
            rec_weight, self_contrast_weight, cross_contrast_weight, image_recon_weight
        )
        if min(vars(weights).values()) < 0 or temperature <= 0:
            raise ValueError(f"loss weights must be >= 0 and temperature > 0, got {weights}, {temperature}")
        if image_guided and not 0.0 < image_mask_ratio < 1.0:
            raise ValueError(f"image_mask_ratio must be in (0, 1), got {image_mask_ratio}")
        source = None
        if init_ckpt is not None:
            require_checkpoint(init_ckpt, "init_ckpt", DCMAE_PHASE1_WRITER)
            source = load_model(init_ckpt, "model")
            if not isinstance(source, MAE) or source.model_args["num_voxels"] != num_voxels:
                raise ValueError(
                    f"{init_ckpt}: init_ckpt must be a MAEPretrain/DCMAEPretrain checkpoint on the same "
                    f"{num_voxels} padded voxels (it is {type(source).__name__} on "
                    f"{source.model_args['num_voxels']})"
                )
            kwargs |= config_objects({k: source.model_args[k] for k in ("encoder", "decoder")})
        super().__init__(num_voxels, **kwargs)
        if source is not None:
            self._load_initial(source, init_ckpt)
        self.contrast = None  # ClipLoss, set in setup() for the trainer's world size

    @property
    def weights(self) -> DCMAELossWeights:
        hp = self.hparams
        return DCMAELossWeights(
            hp.rec_weight, hp.self_contrast_weight, hp.cross_contrast_weight, hp.image_recon_weight
        )

    def build_model(self) -> DCMAE:
        hp = self.hparams
        guidance = None
        if hp.image_guided:
            from ..models.clip import resolve_clip_grid  # imports open_clip: phase 2 only

            grid = resolve_clip_grid(hp.clip_model, hp.clip_tokens, hp.clip_dim)
            hp.update(clip_tokens=grid[0], clip_dim=grid[1])  # saved resolved: a restore needs no CLIP
            guidance = ImageGuidance(
                self.encoder_config,
                self.decoder_config,
                hp.clip_tokens,
                hp.clip_dim,
                hp.cross_depth,
                self.decoder_config.depth if hp.image_decoder_depth is None else hp.image_decoder_depth,
                image_side=hp.image_recon_weight > 0,
                grad_checkpointing=hp.grad_checkpointing,
            )
        args = (self.encoder_config, self.decoder_config, hp.norm_pix_loss, hp.grad_checkpointing, guidance)
        return DCMAE(hp.num_voxels, *args)

    def _load_initial(self, source: MAE, path: str) -> None:
        """Everything but the guidance modules must come from ``source`` (the model of ``path``)."""
        missing, unexpected = self.model.load_state_dict(source.state_dict(), strict=False)
        missing = [k for k in missing if not k.startswith("guidance.")]
        unexpected = [k for k in unexpected if not k.startswith("guidance.")]
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not fit (missing {missing}, unexpected {unexpected})")

    def prepare_data(self) -> None:
        """Phase 2 builds the CLIP feature cache when it is missing or stale (one process per node)."""
        if self.hparams.image_guided and self.hparams.clip_model is not None:
            prepare_clip_features(self.trainer, self.hparams.clip_model, self.hparams.clip_pretrained)

    def setup(self, stage: str) -> None:
        hp, world = self.hparams, self.trainer.world_size
        if hp.image_guided and hp.clip_model is not None:
            stream_clip_features(self.trainer, hp.clip_model, hp.clip_pretrained)
        if hp.self_contrast_weight > 0 or hp.cross_contrast_weight > 0:
            from open_clip.loss import ClipLoss  # slow to import: only when a contrast term is on

            # negatives from every rank, as FCAEAlign (and open_clip) train
            self.contrast = ClipLoss(
                local_loss=True, gather_with_grad=True, rank=self.global_rank, world_size=world
            )

    def image_tokens(self, batch: dict) -> torch.Tensor | None:
        """The frozen image tokens ``[b, T, D]`` of a phase-2 batch (None in phase 1)."""
        if not self.hparams.image_guided:
            return None
        if IMAGE_TOKENS not in batch:
            raise ValueError(
                "image_guided needs CLIP image tokens in the batch: set model.init_args.clip_model and "
                "clip_pretrained"
            )
        tokens = batch[IMAGE_TOKENS]
        if tokens.shape[1:] != (self.hparams.clip_tokens, self.hparams.clip_dim):
            raise ValueError(
                f"CLIP image tokens are {tuple(tokens.shape[1:])}, the model expects "
                f"({self.hparams.clip_tokens}, {self.hparams.clip_dim}): set model.init_args.clip_tokens/clip_dim"
            )
        return tokens

    def batch_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        hp = self.hparams
        # training gathers keys across ranks; evaluation stays within the local batch
        contrast = self.contrast if self.training else None
        return dcmae_loss(
            self.model,
            batch["fmri"],
            hp.mask_ratio,
            self.weights,
            hp.temperature,
            self.image_tokens(batch),
            hp.image_mask_ratio,
            contrast,
        )
