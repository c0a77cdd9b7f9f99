"""Stage 1: self-supervised pretraining of the fMRI encoder (fCAE, and the MAE baseline).

The LightningModules only wire a plain model (``lightning_fcae.models``), its loss, the optimiser
and logging. Their checkpoints are what stage 2 loads through its ``encoder_ckpt`` argument
(:func:`load_pretrained`); ``fit --ckpt_path`` is for resuming the same stage only.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch

from ..models import FCAE, MAE, DecoderConfig, EncoderConfig, RegressorConfig, fcae_loss, mae_loss, model_size
from .optim import adamw_warmup_cosine

ModelSize = Literal["tiny", "small", "base", "large"]


class MaskedPretrain(L.LightningModule):
    """What FCAEPretrain and MAEPretrain share: schedule, logging, compile, the pooled embedding."""

    model: FCAE | MAE

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

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.losses(batch["fmri"])
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True)
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        losses = self.losses(batch["fmri"])
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
        self.print(f"{type(self).__name__} parameters: {counts}")


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


def stage1_hparams(path: str) -> dict:
    """The hyper-parameters of a FCAEPretrain/MAEPretrain checkpoint, with ``kind`` ("fcae"/"mae")."""
    hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    if "encoder" not in hparams or "num_voxels" not in hparams:
        raise ValueError(f"{path} is not a FCAEPretrain/MAEPretrain checkpoint (no encoder hyper-parameters)")
    return {**hparams, "kind": "fcae" if "regressor" in hparams else "mae"}


def build_stage1(hparams: dict) -> FCAE | MAE:
    """A randomly initialised stage-1 model from :func:`stage1_hparams` (or ``{kind, num_voxels, size}``)."""
    config_types = {"encoder": EncoderConfig, "regressor": RegressorConfig, "decoder": DecoderConfig}
    args = {k: v for k, v in hparams.items() if k != "kind"}
    args.update({k: cls(**args[k]) for k, cls in config_types.items() if isinstance(args.get(k), dict)})
    stage = FCAEPretrain if hparams["kind"] == "fcae" else MAEPretrain
    return stage(**args).model


def load_pretrained(path: str) -> FCAE | MAE:
    """The stage-1 model (fCAE or MAE) from a FCAEPretrain/MAEPretrain checkpoint, on CPU."""
    model = build_stage1(stage1_hparams(path))
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return model
