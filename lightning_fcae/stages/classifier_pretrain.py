"""Training the judge of the stand-in checks: :class:`SceneClassifier` on real benchmark images.

Synthetic benchmark only (it reads the ``shape`` and ``color`` labels of the largest object). Images get
a small random shift and blur: a recogniser of shapes and colours should not hinge on the exact pixels,
and the images it will judge come out of a VQ decoder, softer than the renders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torchvision.transforms import v2

from ..files.atomic import save_pretrained
from ..models.scene_classifier import SceneClassifier
from .optim import adamw_warmup_cosine
from .seeding import RankSeededModule


class ClassifierPretrain(RankSeededModule):
    """Cross-entropy on the largest object's shape and colour; logs ``val/shape_acc``, ``val/color_acc``.

    Args:
        num_voxels: ignored. The CLI links ``data.num_voxels`` into every model, and on a resume
            (``--ckpt_path``) LightningCLI restores saved hyper-parameters as free keyword arguments, where
            the link then lands whatever the class: so every model takes it.
        width: the classifier's first conv width.
        shift: largest random translation, as a fraction of the image side.
        lr / min_lr / warmup_fraction / weight_decay: AdamW, per-step warmup then cosine decay.
        export_dir: where ``on_fit_end`` writes the classifier (a diffusers model folder); None: nowhere.
    """

    def __init__(
        self,
        num_voxels: int = 0,
        width: int = 32,
        shift: float = 0.06,
        lr: float = 2e-3,
        min_lr: float = 1e-5,
        warmup_fraction: float = 0.05,
        weight_decay: float = 1e-4,
        export_dir: str | None = "checkpoints/classifier",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = SceneClassifier(width=width)
        self.augment = v2.Compose(
            [
                v2.RandomAffine(degrees=0, translate=(shift, shift)),
                v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.5),
            ]
        )

    def losses(self, batch: dict, augment: bool) -> dict[str, torch.Tensor]:
        images = batch["image"]
        if augment:
            images = torch.stack([self.augment(image) for image in images])  # per-sample draws
        shape_logits, color_logits = self.model(images)
        shape, color = batch["labels"]["shape"], batch["labels"]["color"]
        return {
            "loss": F.cross_entropy(shape_logits, shape) + F.cross_entropy(color_logits, color),
            "shape_acc": (shape_logits.argmax(1) == shape).float().mean(),
            "color_acc": (color_logits.argmax(1) == color).float().mean(),
        }

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.losses(batch, augment=True)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True)
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        losses = self.losses(batch, augment=False)
        self.log_dict(
            {f"val/{k}": v for k, v in losses.items()}, sync_dist=True, batch_size=len(batch["key"])
        )

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_warmup_cosine(self, hp.lr, hp.min_lr, hp.warmup_fraction, hp.weight_decay)

    def on_fit_end(self) -> None:
        """Export here, not in ``on_train_end``: Lightning skips that when a resumed checkpoint is already
        at ``max_steps``, so a kill between the last checkpoint and the export would never export."""
        if self.trainer.fast_dev_run:  # a smoke test must not replace a trained export
            rank_zero_info(f"fast_dev_run: nothing exported to {self.hparams.export_dir}")
        elif self.hparams.export_dir and self.trainer.is_global_zero:
            save_pretrained(self.model, self.hparams.export_dir)
            rank_zero_info(f"exported the scene classifier to {self.hparams.export_dir}")
