"""Linear probe of the fMRI encoder: how linearly decodable are labels from its latents?

The paper picks lambda by linear-probe accuracy (63.4 / 63.7 / 64.1 for lambda = 1 / 1.5 / 2). The
probe is closed-form ridge regression onto one-hot labels: no optimiser, no learning rate, so the
figure reflects the representation and not the probe's training.

Pooling: a token's position is a place in cortex, so averaging all tokens (what image probes do)
throws away *where* a response is; on the synthetic benchmark it drops shape accuracy to chance.
The default therefore averages tokens within ``groups`` contiguous stretches of cortex and
concatenates them (``[b, groups * d]``): spatially informative, yet small enough for the paper's
983-patch ViT-B. ``tokens`` keeps every token; ``mean`` is the image-style probe.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from einops import rearrange
from lightning.pytorch.utilities import rank_zero_warn
from tqdm import tqdm

Pooling = Literal["groups", "mean", "tokens"]


def pool_latents(latents: torch.Tensor, pool: Pooling = "groups", groups: int = 16) -> torch.Tensor:
    """Patch latents ``[b, n, d]`` -> probe features ``[b, f]``."""
    if pool == "mean":
        return latents.mean(1)
    if pool == "tokens":
        return latents.flatten(1)
    pooled = torch.nn.functional.adaptive_avg_pool1d(rearrange(latents, "b n d -> b d n"), groups)  # b d g
    return rearrange(pooled, "b d g -> b (g d)")


def ridge_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    alpha: float = 1.0,
) -> float:
    """Ridge from standardised ``[n, f]`` features to centred one-hot labels; top-1 accuracy on test.

    ``alpha`` is relative to the training-set size. Solved in whichever of the primal (f x f) or
    dual (n x n) form is smaller, so wide token features stay cheap.
    """
    train_x, test_x = train_x.double(), test_x.double()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-8)
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    targets = torch.nn.functional.one_hot(train_y.long(), classes).double()
    targets = targets - targets.mean(0)
    n, f = xs.shape
    ridge = alpha * n
    if f <= n:
        weights = torch.linalg.solve(xs.T @ xs + ridge * torch.eye(f, dtype=xs.dtype), xs.T @ targets)  # f c
        scores = xt @ weights
    else:
        dual = torch.linalg.solve(xs @ xs.T + ridge * torch.eye(n, dtype=xs.dtype), targets)  # n c
        scores = (xt @ xs.T) @ dual
    return scores.argmax(1).eq(test_y.to(scores.device)).double().mean().item()


@torch.no_grad()
def probe_features(
    pl_module,
    datamodule,
    split: str,
    label: str,
    pool: Pooling = "groups",
    groups: int = 16,
    max_samples=None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled latents and labels of ``split`` (or its first ``max_samples``), in eval mode; ``progress``
    shows a bar over the samples read, since a pass over a large split takes minutes.

    ``pl_module.latents(fmri) -> [b, n, d]`` supplies the encoder's patch latents, unmasked.
    """
    was_training = pl_module.training
    pl_module.eval()
    features, labels, seen = [], [], 0
    total = datamodule.num_samples(split)
    total = total if max_samples is None else min(total, max_samples)
    bar = tqdm(total=total, desc=f"linear probe ({split})", unit="sample", leave=False, disable=not progress)
    for batch in datamodule.eval_dataloader(split):
        bar.update(len(batch["fmri"]))
        if label not in batch["labels"]:  # no sample of this batch carries the label
            continue
        keep = batch["labels"][label] >= 0
        latents = pl_module.latents(batch["fmri"].to(pl_module.device))
        features.append(pool_latents(latents, pool, groups)[keep.to(pl_module.device)].cpu())
        labels.append(batch["labels"][label][keep])
        seen += int(keep.sum())
        if max_samples is not None and seen >= max_samples:
            break
    bar.close()
    pl_module.train(was_training)
    if not seen:
        raise ValueError(
            f"no {split} sample has the label {label!r} (synthetic data: shape, color, count; NSD: COCO "
            "categories, only when the conversion had COCO instances)"
        )
    return torch.cat(features)[:max_samples], torch.cat(labels)[:max_samples]


class LinearProbe(L.Callback):
    """After a validation epoch: fit the ridge probe on training latents, log ``probe/<label>_acc`` on
    the validation split (never on test: choosing lambda by test accuracy would leak).

    Skipped in the sanity check and in ``fast_dev_run`` (a smoke test: its probe would cost a pass over
    the data and its figure is discarded). Each probe reads at most ``max_train_samples`` +
    ``max_val_samples`` samples, with a progress bar when the trainer shows one.

    Args:
        label: key of meta.json ``labels`` to predict (synthetic: ``shape``, ``color``, ``count``).
        pool / groups: how patch latents become one vector (see the module docstring).
        alpha: ridge strength relative to the sample count.
        max_train_samples / max_val_samples: caps on the samples read (shards are read in order, so a
            cap favours the first subjects); None = all.
        every_n_epochs: probe frequency.
    """

    def __init__(
        self,
        label: str = "shape",
        pool: Pooling = "groups",
        groups: int = 16,
        alpha: float = 0.1,
        max_train_samples: int | None = 2000,
        max_val_samples: int | None = 1000,
        every_n_epochs: int = 1,
    ):
        self.label, self.pool, self.groups, self.alpha = label, pool, groups, alpha
        self.max_train_samples, self.max_val_samples = max_train_samples, max_val_samples
        self.every_n_epochs = every_n_epochs
        self.unavailable = False  # set when the dataset has no sample with ``label``

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or self.unavailable:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        progress = trainer.progress_bar_callback is not None and trainer.is_global_zero
        caps = (("train", self.max_train_samples), ("val", self.max_val_samples))
        try:
            features = [
                probe_features(
                    pl_module, trainer.datamodule, split, self.label, self.pool, self.groups, cap, progress
                )
                for split, cap in caps
            ]
        # a probe is a diagnostic: a dataset without its label must not end training
        except ValueError as exc:
            rank_zero_warn(f"LinearProbe off: {exc}; set its `label` to one the dataset has, or remove it")
            self.unavailable = True
            return
        accuracy = ridge_probe_accuracy(*features[0], *features[1], self.alpha)
        pl_module.log(f"probe/{self.label}_acc", accuracy, sync_dist=True)
