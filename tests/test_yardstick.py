"""The ridge yardstick: the closed form it uses, and what the pipeline reports from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_fcae.metrics.ridge import Ridge, best_alpha
from lightning_fcae.models.clip import load_clip
from lightning_fcae.runs.yardstick import ridge_yardstick


@pytest.mark.parametrize("n, v", [(30, 50), (50, 20)])  # wide (n < V) and tall problems
def test_ridge_equals_the_normal_equations(n, v):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(n, v)), rng.normal(size=(n, 3))
    x_new = rng.normal(size=(4, v))
    ridge = Ridge(x)
    alpha = ridge.alphas[5]
    pred = ridge.predict(ridge.project(x_new), ridge.fit(y), alpha)
    xc, yc = x - x.mean(0), y - y.mean(0)
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(v), xc.T @ yc)
    assert np.allclose(pred, (x_new - x.mean(0)) @ w + y.mean(0), atol=1e-8)


def test_best_alpha_prefers_the_stronger_penalty_on_ties():
    assert best_alpha([0.5, 0.7, 0.7], np.array([1.0, 2.0, 3.0])) == 3.0


def test_yardstick_scores_like_the_methods_and_finds_signal(synthetic_tiny):
    torch.manual_seed(0)
    clip = load_clip("fcae-clip-tiny", None)  # random weights: still an image embedding to decode
    result = ridge_yardstick(str(synthetic_tiny), clip, image_size=16, n_way=10)
    identification, recon = result["identification"], result["recon"]
    assert set(result["identification_per_subject"]) == {"subj01", "subj02"}
    # the tiny benchmark carries signal: well above the 10% chance of 10-way identification
    assert identification["top1_10way"] > 0.3 and identification["top1_2way"] > 0.7
    assert recon["raw"]["mean"]["pixcorr"] > 0.2
    assert 0.5 < recon["pairwise"]["mean"]["pairwise_pcc"] <= 1
    assert {"clip_score", "clip_2way", "clip_10way"} <= set(recon["raw"]["mean"])
    assert recon["meta"]["images"] == 96
    # its images of each subject's first test samples, laid out as reconstruct's grid (the report's tiles)
    assert set(result["grid"]) == {0, 1} and len(result["grid"][0]) == 8
    truth, images, label = result["grid"][1][0]
    assert truth.shape == (3, 16, 16) and images.shape == (1, 3, 16, 16) and images.dtype == torch.uint8
    assert label["subject"] == "subj02" and label["key"] and label["caption"]
