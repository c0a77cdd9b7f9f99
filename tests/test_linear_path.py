"""Stage 2's linear path (``linear_path: ridge``): it starts as the ridge, is refused where no ridge can be
fitted, reaches every consumer of the aligner with each row's subject, and training is kept only where it
beats the step-0 model on val (``BestCheckpoint``)."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_fcae.data.datamodule import NSDDataModule
from lightning_fcae.metrics.identification import n_way_top1
from lightning_fcae.metrics.ridge import Ridge, best_alpha
from lightning_fcae.models.align import FMRIAligner, soft_clip_loss
from lightning_fcae.models.factory import load_fmri_aligner
from lightning_fcae.models.fmri_condition import FMRIConditionEncoder
from lightning_fcae.stages.align import FCAEAlign
from lightning_fcae.stages.checkpointing import BestCheckpoint
from lightning_fcae.stages.clip_features import IMAGE_EMBED, IMAGE_TOKENS
from lightning_fcae.stages.linear_path import LinearPathError

from .conftest import write_toy_dataset

CLIP = {"clip_model": "fcae-clip-tiny"}  # random-init, features cached beside the data


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(default_root_dir=tmp_path, enable_checkpointing=False, **{**defaults, **kwargs})


def _data(root) -> NSDDataModule:
    return NSDDataModule(str(root), batch_size=16, num_workers=0, with_images=False, sparsity=0.0)


def _split(dm: NSDDataModule, split: str, module: FCAEAlign) -> dict:
    """The first subject's voxels and centred targets of a split, through the stage's own batches."""
    out = {"fmri": [], "tokens": [], "embed": []}
    for batch in dm.eval_dataloader(split):
        rows = batch["subject"] == 0
        out["fmri"].append(batch["fmri"][rows])
        out["tokens"].append(batch[IMAGE_TOKENS][rows] - module.clip_token_mean)
        out["embed"].append(batch[IMAGE_EMBED][rows] - module.clip_embed_mean)
    return {k: torch.cat(v) for k, v in out.items()}


def test_linear_path_starts_as_the_ridge(synthetic_tiny, tmp_path):
    """At step 0 the aligner predicts what a plain ridge from voxels to the (centred) CLIP tokens predicts,
    at the penalty whose val identification is best, and the step-0 validation logs the scores the fit
    reported. The rank spans the targets, so the reduced-rank map loses nothing."""
    L.seed_everything(0)
    dm = _data(synthetic_tiny)
    module = FCAEAlign(dm.num_voxels, linear_path="ridge", linear_rank=512, n_way=10, mask_ratio=0.0, **CLIP)
    _trainer(tmp_path, max_steps=0).fit(module, dm)  # setup fits the ridge; no step is taken
    assert module.initial_val_scores.keys() == {"val/top1_2way", "val/top1_10way"}

    train, val = _split(dm, "train", module), _split(dm, "val", module)
    voxels = next(iter(dm.subjects.values()))
    ridge = Ridge(train["fmri"][:, :voxels].double().numpy())
    fit = ridge.fit(train["tokens"].flatten(1).double().numpy())
    projected = ridge.project(val["fmri"][:, :voxels].double().numpy())
    predictions = [
        ridge.predict(projected, fit, alpha).reshape(val["tokens"].shape) for alpha in ridge.alphas
    ]

    def score(tokens: np.ndarray) -> float:
        p, t = F.normalize(torch.from_numpy(tokens[:, 0]).float(), dim=-1), F.normalize(val["embed"], dim=-1)
        return n_way_top1(p @ t.T, torch.arange(len(t)), 10).item()

    chosen = best_alpha([score(p) for p in predictions], ridge.alphas)
    expected = torch.from_numpy(predictions[list(ridge.alphas).index(chosen)]).float()
    module.eval()
    with torch.no_grad():
        got = module.aligner(val["fmri"], subject=torch.zeros(len(val["fmri"]), dtype=torch.long))
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()

    logged = _trainer(tmp_path).validate(module, dm, verbose=False)[0]
    for key, value in module.initial_val_scores.items():
        assert logged[key] == pytest.approx(value, abs=1e-6), key


def test_linear_path_is_refused_without_a_val_split(tmp_path):
    root = write_toy_dataset(tmp_path / "no_val", n_val=0)
    dm = _data(root)
    module = FCAEAlign(dm.num_voxels, linear_path="ridge", **CLIP)
    with pytest.raises(LinearPathError, match="has no val split: set linear_path: none"):
        _trainer(tmp_path, max_steps=0, limit_val_batches=0).fit(module, dm)


def test_training_is_kept_only_where_it_beats_the_step0_model_on_val(synthetic_tiny, tmp_path):
    """A learning rate that wrecks the ridge makes every epoch worse on val: best.ckpt stays the step-0
    model, which the recorded model rebuilds with its linear path."""
    L.seed_everything(0)
    dm = _data(synthetic_tiny)
    module = FCAEAlign(
        dm.num_voxels, linear_path="ridge", linear_rank=32, n_way=10, lr=1.0, linear_lr=1.0, **CLIP
    )
    best = BestCheckpoint(dirpath=str(tmp_path), monitor="val/top1_10way")
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[best], num_sanity_val_steps=0)
    trainer.fit(module, dm)
    assert best.best == pytest.approx(module.initial_val_scores["val/top1_10way"])
    assert best.best > 0.3 and trainer.callback_metrics["val/top1_10way"] < best.best  # chance 0.1
    stored = torch.load(tmp_path / "best.ckpt", weights_only=False)
    assert stored["global_step"] == 0
    assert not torch.equal(stored["state_dict"]["aligner.linear.weight"], module.aligner.linear.weight)
    restored = load_fmri_aligner(tmp_path / "best.ckpt")  # the recorded model rebuilds with its linear path
    assert restored.linear.subjects == list(dm.subjects)


def test_best_checkpoint_prefers_a_better_epoch(tmp_path):
    """Without an initial score the first validated epoch is saved; a later one replaces it only when it
    scores better, and the fallback metric decides when the monitored one is missing."""

    class Scores(L.LightningModule):
        def __init__(self, scores):
            super().__init__()
            self.scores, self.layer = scores, torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def validation_step(self, batch, batch_idx):
            self.log("val/top1_2way", self.scores[self.current_epoch])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.ones(2, 1), batch_size=1)

        val_dataloader = train_dataloader

    best = BestCheckpoint(dirpath=str(tmp_path))  # monitors val/top1_50way: absent, so the 2-way decides
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[best], num_sanity_val_steps=0)
    trainer.fit(Scores([0.6, 0.9, 0.7]))
    assert best.best == pytest.approx(0.9) and best.metric == "val/top1_2way"
    assert torch.load(tmp_path / "best.ckpt", weights_only=False)["epoch"] == 1


def test_the_linear_path_reads_each_rows_subject():
    """Rows of two subjects in one batch: each goes through its own subject's map; the condition encoder
    takes subject names (one for raw voxels, one per row for z-scored ones) and refuses none."""
    torch.manual_seed(0)
    module = FCAEAlign(64, clip_tokens=3, clip_dim=8)
    aligner: FMRIAligner = module.aligner
    path = aligner.add_linear_path(["a", "b"], rank=4)
    with torch.no_grad():
        for p in path.parameters():
            p.normal_()
    x = torch.randn(3, 64)
    subject = torch.tensor([1, 0, 1])
    own = torch.stack([(x[i] @ path.weight[s] + path.bias[s]) @ path.basis for i, s in enumerate(subject)])
    expected = own.view(3, 3, 8) + path.mean
    with torch.no_grad():
        assert torch.allclose(aligner(x, subject=subject), expected, atol=1e-5)  # deep path at zero
        with pytest.raises(ValueError, match="per-subject linear path"):
            aligner(x)
        encoder = FMRIConditionEncoder(aligner.model_args, {"a": 60, "b": 64})
        encoder.aligner.load_state_dict(aligner.state_dict())
        assert torch.allclose(encoder(x, ["b", "a", "b"]), expected, atol=1e-5)
        raw = torch.randn(2, 60)  # subject a's raw voxels: z-scored (mean 0, std 1 here) and padded
        assert torch.allclose(encoder(raw, "a"), encoder(F.pad(raw, (0, 4)), ["a", "a"]), atol=1e-6)
        with pytest.raises(ValueError, match="pass subject="):
            encoder(x)
        with pytest.raises(LookupError, match="fitted for subjects"):
            encoder(x, ["a", "c", "b"])


def test_soft_clip_loss_by_hand():
    """Orthogonal unit predictions equal to their targets: targets soften to softmax([s, 0]), the loss is
    that distribution's entropy; with s = ln 3 it is [3/4, 1/4]."""
    eye = torch.eye(2)
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert soft_clip_loss(eye, eye, torch.tensor(math.log(3))).item() == pytest.approx(expected, rel=1e-6)
