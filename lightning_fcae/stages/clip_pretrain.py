"""Training the synthetic benchmark's CLIP stand-in.

Stage 2 aligns fMRI to a frozen CLIP. Real data uses a pretrained open_clip model; the synthetic
benchmark has no such model offline (and its shapes-and-colours images are far from web photos), so
this stage trains a small open_clip model (``fcae-clip-small``) on the benchmark's own image-caption
pairs with open_clip's symmetric InfoNCE loss, then exports weights that ``load_clip`` and
``open_clip.create_model`` load like any other checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from open_clip.loss import ClipLoss
from torchvision.transforms import v2

from ..files.atomic import atomic_file
from ..models.clip import create_random_model, encode_captions, preprocess, preprocess_constants
from .optim import adamw_warmup_cosine
from .seeding import RankSeededModule


class ClipPretrain(RankSeededModule):
    """Contrastive image-caption training of an open_clip model from scratch.

    Each step pairs every image with one of its captions drawn at random; images get a random
    resized crop. There is no horizontal flip: synthetic captions say "on the left". Validation logs
    ``val/top1``, image->text retrieval over the distinct val images (correct when the retrieved
    caption set is the image's own, so images with identical captions do not count as errors), and
    ``val/loss``. Needs ``data.with_images: true``.

    Args:
        num_voxels: ignored. The CLI links ``data.num_voxels`` into every model, and on a resume
            (``--ckpt_path``) LightningCLI restores saved hyper-parameters as free keyword arguments, where
            the link then lands whatever the class: so every model takes it.
        architecture: open_clip config to train (``fcae-clip-small``; ``fcae-clip-tiny`` for tests).
        lr / min_lr / warmup_fraction: linear warmup then cosine decay, per step.
        weight_decay: AdamW weight decay (not on norms, biases, class embedding, logit scale).
        crop_scale: area range of the random resized crop.
        export_path: where ``on_fit_end`` writes the open_clip state dict; ``{architecture}`` in it
            becomes the architecture name (None: do not export).
    """

    def __init__(
        self,
        num_voxels: int = 0,
        architecture: str = "fcae-clip-small",
        lr: float = 5e-4,
        min_lr: float = 1e-5,
        warmup_fraction: float = 0.05,
        weight_decay: float = 0.2,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        export_path: str | None = "checkpoints/clip/{architecture}.pt",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = create_random_model(architecture, output_dict=True)  # trained here, from scratch
        self.tokenizer = open_clip.get_tokenizer(architecture)
        self.image_size, mean, std = preprocess_constants(self.model)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.augment = v2.RandomResizedCrop(self.image_size, scale=tuple(crop_scale), antialias=True)
        self.loss = ClipLoss()
        self._val: list[tuple[list[str], torch.Tensor, torch.Tensor, list[tuple[str, ...]]]] = []

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule
        if data is not None and not getattr(data.hparams, "with_images", True):
            raise ValueError(
                "ClipPretrain trains on images and captions: set data.init_args.with_images: true"
            )
        world = self.trainer.world_size
        if world > 1:  # negatives from every rank, as open_clip trains; batches are equal-sized in training
            self.loss = ClipLoss(
                local_loss=True, gather_with_grad=True, rank=self.global_rank, world_size=world
            )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[b, 3, H, W]`` in [0, 1] -> model input, as FrozenClip does at inference."""
        return preprocess(images, self.image_size, self.mean, self.std)

    def contrastive_loss(
        self, inputs: torch.Tensor, texts: list[str], loss: ClipLoss | None = None
    ) -> torch.Tensor:
        """InfoNCE of preprocessed images ``[b, 3, s, s]`` against one text each."""
        out = self.model(inputs, self.tokenizer(texts).to(self.device))
        return (loss or self.loss)(out["image_features"], out["text_features"], out["logit_scale"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = torch.stack([self.augment(image) for image in batch["image"]])  # per-sample crops
        texts = [caps[torch.randint(len(caps), ()).item()] for caps in batch["captions"]]
        loss = self.contrastive_loss((images - self.mean) / self.std, texts)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", self.model.logit_scale.exp())
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        with torch.no_grad():  # as open_clip: a temperature below 1/100 destabilises training
            self.model.logit_scale.clamp_(0, math.log(100))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        inputs = self.preprocess(batch["image"])
        texts = [caps[0] for caps in batch["captions"]]
        self.log(
            "val/loss",
            self.contrastive_loss(inputs, texts, ClipLoss()),
            batch_size=len(texts),
            sync_dist=True,
        )
        images = F.normalize(self.model.encode_image(inputs), dim=-1)  # b d
        captions = encode_captions(self.model, self.tokenizer, batch["captions"])  # b d
        self._val.append((batch["key"], images, captions, [tuple(c) for c in batch["captions"]]))

    def on_validation_epoch_end(self) -> None:
        """Top-1 image->text retrieval among this rank's distinct val images (all of them on one device)."""
        seen, images, texts, captions = set(), [], [], []
        for keys, image_emb, text_emb, caps in self._val:
            for i, key in enumerate(keys):
                image = key.split("_", 1)[1]  # subj01_nsd000123 -> nsd000123: shared across subjects
                if image not in seen:
                    seen.add(image)
                    images.append(image_emb[i])
                    texts.append(text_emb[i])
                    captions.append(caps[i])
        self._val.clear()
        if not images:
            return
        best = (torch.stack(images) @ torch.stack(texts).T).argmax(1).tolist()  # n
        top1 = sum(captions[j] == captions[i] for i, j in enumerate(best)) / len(best)
        self.log("val/top1", torch.tensor(top1, device=self.device), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_warmup_cosine(self, hp.lr, hp.min_lr, hp.warmup_fraction, hp.weight_decay)

    def export(self, path: str | Path) -> Path:
        """Write the open_clip state dict (CPU tensors), loadable by ``load_clip(clip_model, path)``."""
        path = Path(path)
        with atomic_file(path) as f:  # stage 2 never loads a half-written file
            torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, f)
        return path

    def on_fit_end(self) -> None:
        """Export here, not in ``on_train_end``: Lightning skips that when a resumed checkpoint is already
        at ``max_steps``, so a kill between the last checkpoint and the export would never export."""
        if self.trainer.fast_dev_run:  # a smoke test must not replace trained weights
            rank_zero_info(f"fast_dev_run: nothing exported to {self.hparams.export_path}")
        elif self.hparams.export_path and self.trainer.is_global_zero:
            path = self.export(self.hparams.export_path.format(architecture=self.hparams.architecture))
            rank_zero_info(
                f"exported {self.hparams.architecture} to {path}: use clip_model: {self.hparams.architecture}, "
                f"clip_pretrained: {path}"
            )
