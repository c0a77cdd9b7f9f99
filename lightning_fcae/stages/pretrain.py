"""Stage 1: self-supervised pretraining of the fMRI encoder (fCAE, and the MAE and DC-MAE baselines).

The LightningModules only wire a plain model (``lightning_fcae.models``), its loss, the optimiser
and logging. Their checkpoints are what stage 2 loads through its ``encoder_ckpt`` argument
(:func:`load_pretrained`); ``fit --ckpt_path`` is for resuming the same stage only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info

from ..models import FCAE, MAE, DecoderConfig, EncoderConfig, RegressorConfig, fcae_loss, mae_loss, model_size
from ..models.dcmae import DCMAE, ImageGuidance, image_reconstruction_loss, info_nce, local_contrast
from ..models.vit import unpatchify
from .optim import adamw_warmup_cosine
from .seeding import RankSeededModule

ModelSize = Literal["tiny", "small", "base", "large"]


class MaskedPretrain(RankSeededModule):
    """What the stage-1 modules share: schedule, logging, compile, the pooled embedding."""

    model: FCAE | MAE | DCMAE

    def __init__(
        self,
        lr: float,
        min_lr: float,
        warmup_fraction: float,
        weight_decay: float,
        mask_ratio: float,
        compile: bool,
    ):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")

    def configure_model(self) -> None:
        if self.hparams.compile:
            self.model.compile()  # in place; a second call (fit then test) is a no-op recompile

    def losses(self, fmri: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def batch_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The loss terms of a batch (``loss`` is the total); these modules read its voxels only."""
        return self.losses(batch["fmri"])

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


def _sizes(size: ModelSize, encoder, regressor, decoder):
    default_encoder, default_regressor, default_decoder = model_size(size)
    return encoder or default_encoder, regressor or default_regressor, decoder or default_decoder


class FCAEPretrain(MaskedPretrain):
    """The paper's stage 1: ``CE(Y_m, discretised X_m) + lam * MSE(Z_m, sg[E(X_m)])``.

    Args:
        num_voxels: padded voxel count (linked from the DataModule by the CLI).
        size: named size (``tiny``/``small``/``base``/``large``); ``encoder``/``regressor``/``decoder``
            override its parts.
        lam: weight of the latent alignment loss (paper: 2).
        mask_ratio: fraction of patches masked (paper: 0.75).
        target: ``ce`` (paper: discretised targets) or ``mse``.
        num_bins / clip: discretisation of z-scored voxels for ``ce``.
        lr / min_lr / warmup_fraction: warmup then cosine (paper: 1.7e-3 -> 1e-4).
        weight_decay: AdamW weight decay (paper: 0.05).
        grad_checkpointing: recompute activations in backward (less memory, ~30% slower).
        compile: ``torch.compile`` the model.
    """

    def __init__(
        self,
        num_voxels: int,
        size: ModelSize = "small",
        encoder: EncoderConfig | None = None,
        regressor: RegressorConfig | None = None,
        decoder: DecoderConfig | None = None,
        lam: float = 2.0,
        mask_ratio: float = 0.75,
        target: Literal["ce", "mse"] = "ce",
        num_bins: int = 32,
        clip: float = 3.0,
        lr: float = 1.7e-3,
        min_lr: float = 1e-4,
        warmup_fraction: float = 0.05,
        weight_decay: float = 0.05,
        grad_checkpointing: bool = False,
        compile: bool = False,
    ):
        super().__init__(lr, min_lr, warmup_fraction, weight_decay, mask_ratio, compile)
        encoder, regressor, decoder = _sizes(size, encoder, regressor, decoder)
        self.save_hyperparameters(ignore=["encoder", "regressor", "decoder"])
        # resolved sizes as plain dicts: checkpoints then load with torch.load(weights_only=True)
        self.hparams.update(encoder=vars(encoder), regressor=vars(regressor), decoder=vars(decoder))
        self.model = FCAE(num_voxels, encoder, regressor, decoder, num_bins, clip, target, grad_checkpointing)

    def losses(self, fmri: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(fmri, self.hparams.mask_ratio)
        return fcae_loss(out, self.model.discretizer, self.hparams.lam)


class MAEPretrain(MaskedPretrain):
    """The MinD-Vis (SC-MBM) baseline: MSE on masked patches, no regressor. Same arguments as
    FCAEPretrain where they apply."""

    def __init__(
        self,
        num_voxels: int,
        size: ModelSize = "small",
        encoder: EncoderConfig | None = None,
        decoder: DecoderConfig | None = None,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        lr: float = 1.7e-3,
        min_lr: float = 1e-4,
        warmup_fraction: float = 0.05,
        weight_decay: float = 0.05,
        grad_checkpointing: bool = False,
        compile: bool = False,
    ):
        super().__init__(lr, min_lr, warmup_fraction, weight_decay, mask_ratio, compile)
        encoder, _, decoder = _sizes(size, encoder, None, decoder)
        self.save_hyperparameters(ignore=["encoder", "decoder"])
        self.hparams.update(encoder=vars(encoder), decoder=vars(decoder))
        self.model = MAE(num_voxels, encoder, decoder, norm_pix_loss, grad_checkpointing)

    def losses(self, fmri: torch.Tensor) -> dict[str, torch.Tensor]:
        return mae_loss(self.model(fmri, self.hparams.mask_ratio))


class DCMAEPretrain(MaskedPretrain):
    """The vis-dec baseline (Sun et al. 2023): the Double-contrastive MAE, and with ``image_guided`` its
    phase 2, where the MAE exchanges cross-attention with frozen image tokens (models/dcmae.py).

    ``loss = rec_weight * MSE(masked patches) + self_contrast_weight * InfoNCE(pred_1, x)
    + cross_contrast_weight * InfoNCE(pred_1, pred_2) [+ image_recon_weight * MSE(masked image tokens)]``.
    Under DDP the contrastive keys are gathered from every rank in training (open_clip ClipLoss,
    ``local_loss=True, gather_with_grad=True``); validation contrasts within the local batch.

    Args:
        num_voxels / size / encoder / decoder / mask_ratio / norm_pix_loss: as MAEPretrain.
        rec_weight: weight of the masked-patch MSE (vis-dec: 1 in phase 1, 0.25 in phase 2).
        self_contrast_weight / cross_contrast_weight: InfoNCE of the first reconstruction against the
            input / against the reconstruction of a second random masking (vis-dec: 1 and 0.5);
            0 switches a term off (and, for cross, its second forward pass).
        temperature: InfoNCE temperature on cosine similarities (vis-dec: 0.1).
        image_guided: phase 2; the batch must carry ``clip_image_tokens`` (set ``data.clip_model``).
        init_ckpt: start from a MAEPretrain/DCMAEPretrain checkpoint (phase 2 from phase 1); its sizes
            replace ``size``/``encoder``/``decoder``. New guidance modules start from scratch.
        clip_tokens / clip_dim: the image tokens, T x D (phase 2; ViT-B-32: 50 x 512).
        cross_depth: cross-attention blocks on each side (vis-dec: 3).
        image_decoder_depth: blocks of the image-token decoder (vis-dec: 6); None: the decoder's depth.
        image_mask_ratio: fraction of image tokens masked (vis-dec: 0.5).
        image_recon_weight: weight of the masked image-token MSE (vis-dec: 1.5); 0 drops the image side.
        lr / min_lr / warmup_fraction / weight_decay / grad_checkpointing / compile: as MAEPretrain.
    """

    def __init__(
        self,
        num_voxels: int,
        size: ModelSize = "small",
        encoder: EncoderConfig | None = None,
        decoder: DecoderConfig | None = None,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        rec_weight: float = 1.0,
        self_contrast_weight: float = 1.0,
        cross_contrast_weight: float = 0.5,
        temperature: float = 0.1,
        image_guided: bool = False,
        init_ckpt: str | None = None,
        clip_tokens: int = 50,
        clip_dim: int = 512,
        cross_depth: int = 3,
        image_decoder_depth: int | None = None,
        image_mask_ratio: float = 0.5,
        image_recon_weight: float = 1.5,
        lr: float = 1.7e-3,
        min_lr: float = 1e-4,
        warmup_fraction: float = 0.05,
        weight_decay: float = 0.05,
        grad_checkpointing: bool = False,
        compile: bool = False,
    ):
        super().__init__(lr, min_lr, warmup_fraction, weight_decay, mask_ratio, compile)
        weights = (rec_weight, self_contrast_weight, cross_contrast_weight, image_recon_weight)
        if min(weights) < 0 or temperature <= 0:
            raise ValueError(f"loss weights must be >= 0 and temperature > 0, got {weights}, {temperature}")
        if image_guided and not 0.0 < image_mask_ratio < 1.0:
            raise ValueError(f"image_mask_ratio must be in (0, 1), got {image_mask_ratio}")
        if init_ckpt is not None:
            require_checkpoint(init_ckpt, "init_ckpt", DCMAE_PHASE1_WRITER)
            source = stage1_hparams(init_ckpt)
            if source["kind"] not in ("mae", "dcmae") or source["num_voxels"] != num_voxels:
                raise ValueError(
                    f"{init_ckpt}: init_ckpt must be a MAEPretrain/DCMAEPretrain checkpoint on the same "
                    f"{num_voxels} padded voxels (it is {source['kind']} on {source['num_voxels']})"
                )
            encoder, decoder = EncoderConfig(**source["encoder"]), DecoderConfig(**source["decoder"])
        encoder, _, decoder = _sizes(size, encoder, None, decoder)
        self.save_hyperparameters(ignore=["encoder", "decoder"])
        self.hparams.update(encoder=vars(encoder), decoder=vars(decoder))
        guidance = None
        if image_guided:
            guidance = ImageGuidance(
                encoder,
                decoder,
                clip_tokens,
                clip_dim,
                cross_depth,
                decoder.depth if image_decoder_depth is None else image_decoder_depth,
                image_side=image_recon_weight > 0,
                grad_checkpointing=grad_checkpointing,
            )
        self.model = DCMAE(num_voxels, encoder, decoder, norm_pix_loss, grad_checkpointing, guidance)
        if init_ckpt is not None:
            self._load_initial(init_ckpt)
        self.contrast = None  # ClipLoss, set in setup() for the trainer's world size

    def _load_initial(self, path: str) -> None:
        """Everything but the guidance modules must come from ``path``."""
        missing, unexpected = self.model.load_state_dict(load_pretrained(path).state_dict(), strict=False)
        missing = [k for k in missing if not k.startswith("guidance.")]
        unexpected = [k for k in unexpected if not k.startswith("guidance.")]
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not fit (missing {missing}, unexpected {unexpected})")

    def setup(self, stage: str) -> None:
        hp, world = self.hparams, self.trainer.world_size
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
        if "clip_image_tokens" not in batch:
            raise ValueError(
                "image_guided needs CLIP image tokens in the batch: set data.init_args.clip_model"
            )
        tokens = batch["clip_image_tokens"]
        if tokens.shape[1:] != (self.hparams.clip_tokens, self.hparams.clip_dim):
            raise ValueError(
                f"CLIP image tokens are {tuple(tokens.shape[1:])}, the model expects "
                f"({self.hparams.clip_tokens}, {self.hparams.clip_dim}): set model.init_args.clip_tokens/clip_dim"
            )
        return tokens

    def batch_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        hp, fmri, tokens = self.hparams, batch["fmri"], self.image_tokens(batch)
        contrast = None
        if hp.self_contrast_weight > 0 or hp.cross_contrast_weight > 0:
            # training gathers keys across ranks; evaluation stays within the local batch
            contrast = self.contrast if self.training and self.contrast is not None else local_contrast()
        first = self.model(fmri, hp.mask_ratio, image_tokens=tokens)
        terms = {"rec": mae_loss(first)["rec"]}
        weighted = {"rec": hp.rec_weight}
        query = unpatchify(first.pred)  # b V
        if hp.self_contrast_weight > 0:
            terms["self_contrast"] = info_nce(query, unpatchify(first.target), hp.temperature, contrast)
            weighted["self_contrast"] = hp.self_contrast_weight
        if hp.cross_contrast_weight > 0:
            second = self.model(fmri, hp.mask_ratio, image_tokens=tokens)  # an independent masking
            terms["cross_contrast"] = info_nce(query, unpatchify(second.pred), hp.temperature, contrast)
            weighted["cross_contrast"] = hp.cross_contrast_weight
        if tokens is not None and hp.image_recon_weight > 0:
            fmri_latent = self.model.encoder(fmri)  # every patch, no image: vis-dec's "fmri support"
            image = self.model.guidance.reconstruct_image(tokens, fmri_latent, hp.image_mask_ratio)
            terms["image_rec"] = image_reconstruction_loss(image)
            weighted["image_rec"] = hp.image_recon_weight
        terms["loss"] = sum(weighted[k] * terms[k] for k in weighted)
        return terms

    def losses(self, fmri: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.batch_losses({"fmri": fmri})


STAGE1 = {"fcae": FCAEPretrain, "mae": MAEPretrain, "dcmae": DCMAEPretrain}


def require_checkpoint(path: str, argument: str, written_by: str) -> None:
    """An earlier stage's checkpoint that is not there is a step left out, not a torch.load traceback:
    say which stage writes it and with what command (``written_by``)."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{argument} {path} does not exist: run {written_by} first, or point {argument} at the "
            "checkpoint you trained (lightning-fcae pipeline chains every stage for you)"
        )


# what writes each stage's checkpoint by default (the paths the next stage's config reads)
STAGE1_WRITER = (
    "stage 1 (`lightning fit --config configs/stage1_fcae.yaml` writes checkpoints/stage1_fcae/last.ckpt; "
    "stage1_mae.yaml / stage1_dcmae.yaml write checkpoints/stage1_mae|stage1_dcmae/last.ckpt)"
)
STAGE2_WRITER = (
    "stage 2 (`lightning fit --config configs/stage2_align.yaml` writes checkpoints/stage2_align/last.ckpt, "
    "after stage 1)"
)
DCMAE_PHASE1_WRITER = (
    "vis-dec's phase 1 (`lightning fit --config configs/stage1_dcmae.yaml` writes "
    "checkpoints/stage1_dcmae/last.ckpt)"
)


def stage1_hparams(path: str) -> dict:
    """The hyper-parameters of a FCAEPretrain/MAEPretrain/DCMAEPretrain checkpoint, with ``kind``
    ("fcae"/"mae"/"dcmae")."""
    hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    if "encoder" not in hparams or "num_voxels" not in hparams:
        raise ValueError(
            f"{path} is not a FCAEPretrain/MAEPretrain/DCMAEPretrain checkpoint (no encoder hyper-parameters)"
        )
    kind = "fcae" if "regressor" in hparams else "dcmae" if "self_contrast_weight" in hparams else "mae"
    return {**hparams, "kind": kind}


def build_stage1(hparams: dict) -> FCAE | MAE | DCMAE:
    """A randomly initialised stage-1 model from :func:`stage1_hparams` (or ``{kind, num_voxels, size}``)."""
    config_types = {"encoder": EncoderConfig, "regressor": RegressorConfig, "decoder": DecoderConfig}
    # LightningCLI adds private keys (``_class_path``, ``_instantiator``) to the hyper-parameters
    args = {k: v for k, v in hparams.items() if k != "kind" and not k.startswith("_")}
    args.update({k: cls(**args[k]) for k, cls in config_types.items() if isinstance(args.get(k), dict)})
    if hparams["kind"] == "dcmae":
        args["init_ckpt"] = None  # the architecture is recorded; the weights come with the caller's state
    return STAGE1[hparams["kind"]](**args).model


def load_pretrained(path: str) -> FCAE | MAE | DCMAE:
    """The stage-1 model (fCAE, MAE or DC-MAE) from a FCAEPretrain/MAEPretrain/DCMAEPretrain checkpoint,
    on CPU."""
    model = build_stage1(stage1_hparams(path))
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return model
