"""Linear probe of the fMRI encoder: how linearly decodable are labels from its pooled latents?

The paper picks lambda by linear-probe accuracy (63.4 / 63.7 / 64.1 for lambda = 1 / 1.5 / 2). The
probe is closed-form ridge regression onto one-hot labels: no optimiser, no learning rate, so the
figure reflects the representation and not the probe's training.
"""

from __future__ import annotations

import lightning as L
import torch


def ridge_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    alpha: float = 1.0,
) -> float:
    """Fit ridge (features standardised on train) from ``[n, d]`` features to one-hot labels; return
    top-1 accuracy on the test features. ``alpha`` is relative to the number of training samples."""
    train_x, test_x = train_x.double(), test_x.double()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-8)
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    targets = torch.nn.functional.one_hot(train_y.long(), classes).double()
    targets = targets - targets.mean(0)
    gram = xs.T @ xs + alpha * len(xs) * torch.eye(xs.shape[1], dtype=xs.dtype, device=xs.device)
    weights = torch.linalg.solve(gram, xs.T @ targets)  # d c
    return (xt @ weights).argmax(1).eq(test_y.to(xt.device)).double().mean().item()


class LinearProbe(L.Callback):
    """After each validation epoch: embed the training split (or its first ``max_train_samples``) and the whole
    validation split with ``pl_module.embed`` (frozen, no grad), fit the ridge probe on train, and log
    ``probe/<label>_acc`` on val (never on test: selecting by test would leak).

    Args:
        label: key of meta.json ``labels`` to predict (synthetic: ``shape``, ``color``, ``count``).
        max_train_samples: cap on the training features; None = all (shards are read in order, so a cap
            favours the first subjects).
        alpha: ridge strength relative to the sample count.
        every_n_epochs: probe frequency.
    """

    def __init__(
        self,
        label: str = "shape",
        max_train_samples: int | None = None,
        alpha: float = 1e-3,
        every_n_epochs: int = 1,
    ):
        self.label, self.max_train_samples, self.alpha, self.every_n_epochs = (
            label,
            max_train_samples,
            alpha,
            every_n_epochs,
        )
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _active(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._active(trainer) and self.label in batch["labels"]:
            self._val.append((pl_module.embed(batch["fmri"]), batch["labels"][self.label]))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._active(trainer) or not self._val:
            return
        train_x, train_y = embed_split(
            pl_module, trainer.datamodule, "train", self.label, self.max_train_samples
        )
        val_x = torch.cat([x for x, _ in self._val])
        val_y = torch.cat([y for _, y in self._val])
        accuracy = ridge_probe_accuracy(train_x, train_y, val_x, val_y, self.alpha)
        pl_module.log(f"probe/{self.label}_acc", accuracy, sync_dist=True)


@torch.no_grad()
def embed_split(
    pl_module, datamodule, split: str, label: str, max_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and labels of (up to ``max_samples``) samples of ``split`` (eval mode, no sparsity)."""
    was_training = pl_module.training
    pl_module.eval()
    features, labels, seen = [], [], 0
    for batch in datamodule.eval_dataloader(split):
        keep = batch["labels"][label] >= 0
        features.append(pl_module.embed(batch["fmri"].to(pl_module.device))[keep.to(pl_module.device)])
        labels.append(batch["labels"][label][keep])
        seen += int(keep.sum())
        if max_samples is not None and seen >= max_samples:
            break
    pl_module.train(was_training)
    return torch.cat(features)[:max_samples], torch.cat(labels)[:max_samples]
