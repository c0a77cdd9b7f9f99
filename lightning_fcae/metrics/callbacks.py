"""Reconstruction scores shared by training-time monitoring and the ``reconstruct`` evaluation.

:class:`ReconstructionMetrics` samples a fixed handful of validation images during stage-3 training:
the diffusion loss says little about image quality (it keeps falling while samples get no better), so a
few seeded reconstructions per epoch are the signal worth watching. The score functions live here, not
in ``lightning_fcae.reconstruct``, so that the full evaluation builds on them (metrics <- evaluation)
and both report identical numbers for identical images.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid, save_image

from .identification import NWayIdentification, PairwiseKind, pairwise_identification
from .image import SSIM, ClipScore, ImageMSE, MeanOfScores, PixCorr
from .perceptual import LPIPS_BACKBONES, LPIPSMetric, MissingWeightsError, mindeye_feature_metrics

# Every score here is this process' own: under DDP only rank 0 scores, and a metric's default sync in
# compute() would wait forever for the other ranks.
LOCAL = {"sync_on_compute": False}
GRID_GROUPS_PER_ROW = 8  # images per grid row, truth included: truth | recon pairs come 4 to a row


def mean_score(metric: MeanOfScores, preds: Tensor, target: Tensor, chunk: int = 64) -> float:
    """``metric`` over ``[n, ...]`` inputs fed ``chunk`` rows at a time (bounded memory at 256 px)."""
    metric = metric.to(preds.device)
    for p, t in zip(preds.split(chunk), target.split(chunk)):
        metric.update(p, t)
    return metric.compute().item()


def low_level_metrics(preds: Tensor, target: Tensor) -> dict[str, float]:
    """MindEye's per-image scores of ``[n, 3, H, W]`` images in [0, 1], averaged over images."""
    return {
        "mse": mean_score(ImageMSE(**LOCAL), preds, target),
        "pixcorr": mean_score(PixCorr(**LOCAL), preds, target),
        "ssim": mean_score(SSIM(**LOCAL), preds, target),
    }


def pairwise_metrics(
    preds: Tensor, target: Tensor, kinds: Iterable[PairwiseKind] = ("mse", "pcc", "ssim")
) -> dict[str, float]:
    """MinD-Vis' pair-wise identification of ``[n, 3, H, W]`` images in [0, 1] (chance 0.5)."""
    return {f"pairwise_{kind}": pairwise_identification(preds, target, kind).item() for kind in kinds}


def perceptual_metrics(preds: Tensor, target: Tensor) -> tuple[dict[str, float], dict[str, str]]:
    """LPIPS and MindEye's feature metrics whose weights are on disk; the others with the reason."""
    values, skipped = {}, {}
    for net in LPIPS_BACKBONES:
        try:
            values[f"lpips_{net}"] = mean_score(LPIPSMetric(net, **LOCAL), preds, target, chunk=32)
        except MissingWeightsError as err:
            skipped[f"lpips_{net}"] = str(err)
    suite = mindeye_feature_metrics(preds, target)
    suite.skipped.pop("clip", None)  # CLIP identification is in the raw block
    return values | suite.values, skipped | suite.skipped


def subject_scores(preds: Tensor, truth: Tensor, clip: tuple[Tensor, Tensor] | None, n_way: int) -> dict:
    """All blocks for one subject: ``preds``/``truth`` ``[n, 3, H, W]`` uint8, ``clip`` their ``[n, D]``
    CLIP embeddings. A block's ``skipped`` says why a metric is absent."""
    p, t = preds.float() / 255, truth.float() / 255
    raw, raw_skipped = low_level_metrics(p, t), {}
    if clip is not None:
        raw["clip_score"] = mean_score(ClipScore(**LOCAL), *clip)
        for n in sorted({2, n_way}):
            if n > len(p):
                raw_skipped[f"clip_{n}way"] = f"needs at least {n} images per subject, got {len(p)}"
                continue
            identification = NWayIdentification(n, **LOCAL)
            identification.update(*clip)
            raw[f"clip_{n}way"] = identification.compute().item()
    perceptual, perceptual_skipped = perceptual_metrics(p, t)
    return {
        "raw": (raw, raw_skipped),
        "pairwise": (pairwise_metrics(p, t), {}),
        "perceptual": (perceptual, perceptual_skipped),
    }


def comparison_grid(truth: Tensor, recon: Tensor) -> Tensor:
    """``truth [n, 3, H, W]`` and ``recon [n, s, 3, H, W]`` in [0, 1] -> one ``[3, H', W']`` image in
    which each seen image is followed by its ``s`` reconstructions, as many groups per row as fit."""
    group = 1 + recon.shape[1]
    per_row = group * max(1, GRID_GROUPS_PER_ROW // group)
    tiles = torch.cat([truth[:, None].to(recon), recon], dim=1).flatten(0, 1)  # n*group 3 H W
    return make_grid(tiles.float().cpu(), nrow=per_row, padding=2, pad_value=1.0)


class ReconstructionMetrics(L.Callback):
    """Reconstructs the first ``num_samples`` validation samples at the end of every ``every_n_epochs``-th
    validation epoch and logs ``val_recon/{mse,pixcorr,ssim,pairwise_pcc}`` plus a truth | reconstruction
    grid (``val_recon/grid`` through a logger with ``log_image`` such as W&B, else a PNG
    ``val_recon_epoch{N}.png`` in the trainer's log dir).

    The subset and the sampler seed are fixed, so epochs are compared on the same images and noise.
    Needs ``trainer.datamodule`` to be an :class:`NSDDataModule` and the module to have ``reconstruct``
    (:class:`LDMFinetune`). Under DDP only rank 0 samples and logs (``rank_zero_only``): the other ranks
    go on and wait for it at the next collective, so nothing hangs.
    """

    def __init__(
        self,
        num_samples: int = 16,
        steps: int = 50,
        guidance: float = 3.0,
        every_n_epochs: int = 1,
        seed: int = 0,
    ):
        super().__init__()
        self.num_samples, self.steps, self.guidance = num_samples, steps, guidance
        self.every_n_epochs, self.seed = every_n_epochs, seed
        self._subset: tuple[Tensor, Tensor] | None = None

    def _val_subset(self, trainer: L.Trainer) -> tuple[Tensor, Tensor]:
        """``fmri [n, V]`` and ``image [n, 3, s, s]`` in [0, 1], read once on first use."""
        if self._subset is None:
            datamodule = trainer.datamodule
            if not hasattr(datamodule, "eval_dataloader"):
                raise RuntimeError(
                    "ReconstructionMetrics needs the trainer's datamodule to be an NSDDataModule"
                )
            fmri, images = [], []
            for batch in datamodule.eval_dataloader("val"):  # direct iteration: images stay uint8
                fmri.append(batch["fmri"])
                images.append(batch["image"])
                if sum(map(len, fmri)) >= self.num_samples:
                    break
            n = self.num_samples
            self._subset = torch.cat(fmri)[:n], torch.cat(images)[:n].float() / 255
        return self._subset

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        image_loggers = [logger for logger in trainer.loggers if hasattr(logger, "log_image")]
        # trainer.log_dir broadcasts, so every rank must ask for it (the choice is the same on all ranks)
        directory = None if image_loggers else Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        fmri, truth = self._val_subset(trainer)
        with trainer.precision_plugin.forward_context():  # the precision validation_step runs in
            recon = pl_module.sample(fmri.to(pl_module.device), self.steps, self.guidance, seed=self.seed)
        recon = recon[:, 0].float()  # n 3 H W
        truth = truth.to(recon.device)
        if truth.shape[-2:] != recon.shape[-2:]:  # the module resizes its inputs (image_size)
            truth = TF.resize(truth, list(recon.shape[-2:]), antialias=True)
        scores = low_level_metrics(recon, truth) | pairwise_metrics(recon, truth, kinds=("pcc",))
        for name, value in scores.items():
            pl_module.log(f"val_recon/{name}", value, rank_zero_only=True)

        grid = comparison_grid(truth, recon[:, None])
        for logger in image_loggers:
            logger.log_image(key="val_recon/grid", images=[grid], step=trainer.global_step)
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            save_image(grid, directory / f"val_recon_epoch{trainer.current_epoch}.png")
