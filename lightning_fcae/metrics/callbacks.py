"""The stage-3 training callback that samples and scores a few validation reconstructions.

:class:`ReconstructionMetrics` samples a fixed handful of validation images during stage-3 training:
the diffusion loss says little about image quality (it keeps falling while samples get no better), so a
few seeded reconstructions per epoch are the signal worth watching. It scores them with
:mod:`lightning_fcae.metrics.scoring`, as the ``reconstruct`` evaluation does.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import save_image

from .scoring import comparison_grid, low_level_metrics, pairwise_metrics


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
        self._subset: tuple[Tensor, Tensor, Tensor] | None = None

    def _val_subset(self, trainer: L.Trainer) -> tuple[Tensor, Tensor, Tensor]:
        """``fmri [n, V]``, ``image [n, 3, s, s]`` in [0, 1] and ``subject [n]``, read once on first use."""
        if self._subset is None:
            datamodule = trainer.datamodule
            if not hasattr(datamodule, "eval_dataloader"):
                raise RuntimeError(
                    "ReconstructionMetrics needs the trainer's datamodule to be an NSDDataModule"
                )
            fmri, images, subjects = [], [], []
            for batch in datamodule.eval_dataloader("val"):  # direct iteration: images stay uint8
                fmri.append(batch["fmri"])
                images.append(batch["image"])
                subjects.append(batch["subject"])
                if sum(map(len, fmri)) >= self.num_samples:
                    break
            n = self.num_samples
            self._subset = torch.cat(fmri)[:n], torch.cat(images)[:n].float() / 255, torch.cat(subjects)[:n]
        return self._subset

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        image_loggers = [logger for logger in trainer.loggers if hasattr(logger, "log_image")]
        # trainer.log_dir broadcasts, so every rank must ask for it (the choice is the same on all ranks)
        directory = None if image_loggers else Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        fmri, truth, subject = self._val_subset(trainer)
        with trainer.precision_plugin.forward_context():  # the precision validation_step runs in
            recon = pl_module.sample(
                fmri.to(pl_module.device),
                self.steps,
                self.guidance,
                seed=self.seed,
                subject=subject.to(pl_module.device),
            )
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
