"""Metrics on inputs whose answers are known by construction or by hand."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn
from torchvision.models import alexnet

from lightning_fcae.metrics.identification import (
    ClassifierNWayTop1,
    NWayIdentification,
    PairwiseIdentification,
    n_way_top1,
    pairwise_identification,
)
from lightning_fcae.metrics.image import SSIM, ClipScore, ImageMSE, PixCorr, clip_image_embeddings, to_luma
from lightning_fcae.metrics.perceptual import (
    LPIPSMetric,
    MissingWeightsError,
    available_perceptual_metrics,
    checkpoint_path,
    mindeye_feature_metrics,
)


def images(n=6, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def score(metric, *args):
    metric.update(*args)
    return metric.compute().item()


def test_image_metrics_on_identical_inverted_and_noise():
    x = images()
    assert score(PixCorr(), x, x) == pytest.approx(1, abs=1e-5)
    assert score(ImageMSE(), x, x) == 0
    assert score(SSIM(), x, x) == pytest.approx(1, abs=1e-5)
    assert score(PixCorr(), 1 - x, x) == pytest.approx(-1, abs=1e-5)
    assert abs(score(PixCorr(), images(seed=1), x)) < 0.05
    assert score(SSIM(), images(seed=1), x) < 0.1
    assert score(PixCorr(size=16), x, x) == pytest.approx(1, abs=1e-5)


def test_mse_by_hand():
    target = torch.zeros(2, 3, 2, 2)
    preds = target.clone()
    preds[0, :, 0, 0] = 1.0  # image 0: 3 of 12 values off by 1 -> 3 / 12 = 0.25
    preds[1, :, :, 1] = 0.5  # image 1: 6 of 12 values off by 0.5 -> 6 * 0.25 / 12 = 0.125
    assert score(ImageMSE(), preds, target) == pytest.approx((0.25 + 0.125) / 2)


def test_ssim_follows_skimage_gaussian_convention():
    """Reference: skimage's SSIM (gaussian_weights, sigma 1.5, population covariance, 5-px border
    cropped) on rgb2gray luma, written with scipy's filters."""
    from scipy.ndimage import gaussian_filter

    def reference(a, b):
        f = partial(gaussian_filter, sigma=1.5, truncate=3.5)
        ma, mb = f(a), f(b)
        va, vb, cov = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
        c1, c2 = 0.01**2, 0.03**2
        s = (2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
        return s[5:-5, 5:-5].mean()

    x = torch.nn.functional.avg_pool2d(images(3, 48), 3, 1, 1)  # smooth enough for a mid-range SSIM
    y = 0.6 * x + 0.4 * images(3, 48, seed=1)
    luma = [to_luma(z)[:, 0].double().numpy() for z in (y, x)]
    expected = sum(reference(a, b) for a, b in zip(*luma)) / 3
    assert score(SSIM(), y, x) == pytest.approx(expected, abs=1e-5)


def test_image_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"\[b, 3, H, W\]"):
        PixCorr().update(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))


def test_clip_score_and_embedding_helper():
    preds = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([[3.0, 3.0], [0.0, -2.0]])
    assert score(ClipScore(), preds, target) == pytest.approx((1 / math.sqrt(2) - 1) / 2)

    class PooledColour(nn.Module):  # "CLIP" embedding = per-channel mean of the normalised input
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def encode_image(self, x):
            assert x.shape[-2:] == (224, 224)
            return x.mean((2, 3)) * self.scale

    grey = torch.full((2, 3, 40, 60), 0.5)
    emb = clip_image_embeddings(PooledColour(), grey, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert emb.shape == (2, 3) and torch.allclose(emb, torch.zeros(2, 3), atol=1e-6)


def test_n_way_identification_known_outcomes():
    targets = torch.eye(8) * 3  # orthogonal embeddings
    for trials in (None, 20):
        assert score(NWayIdentification(n_way=5, trials=trials), targets, targets) == 1.0
        shifted = targets.roll(1, 0)  # prediction i is the true embedding of sample i - 1
        assert score(NWayIdentification(n_way=2, trials=trials), shifted, targets) == 0.0
    with pytest.raises(ValueError, match="at least 50 samples"):
        score(NWayIdentification(n_way=50), targets, targets)


def test_n_way_identification_chance_and_sampling():
    g = torch.Generator().manual_seed(0)
    preds, targets = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)
    exact = score(NWayIdentification(n_way=2), preds, targets)
    sampled = score(NWayIdentification(n_way=2, trials=50, seed=3), preds, targets)
    assert 0.45 < exact < 0.55 and abs(sampled - exact) < 0.02
    assert sampled == score(NWayIdentification(n_way=2, trials=50, seed=3), preds, targets)  # seeded
    # the exact 2-way is the pair-wise fraction; a noisy copy is identified above chance at 50-way
    assert exact == pytest.approx(pairwise_identification(preds, targets, "cosine").item())
    noisy = targets + torch.randn(200, 16, generator=g)
    fifty = score(NWayIdentification(n_way=50), noisy, targets)
    assert fifty > 0.3 and abs(score(NWayIdentification(50, trials=30), noisy, targets) - fifty) < 0.04


def test_n_way_top1_exact_probability_by_hand():
    # correct candidate 0 is beaten by one of 3 others (and ties none): a 2-way draw fails 1 time in 3,
    # a 3-way draw succeeds only when it picks both harmless ones: C(2,2)/C(3,2) = 1/3
    scores = torch.tensor([[0.5, 0.9, 0.1, 0.2]])
    assert n_way_top1(scores, torch.tensor([0]), 2).item() == pytest.approx(2 / 3)
    assert n_way_top1(scores, torch.tensor([0]), 3).item() == pytest.approx(1 / 3)
    assert n_way_top1(scores, torch.tensor([0]), 4).item() == 0.0


def test_pairwise_identification():
    x = images()
    for kind in ("mse", "pcc", "ssim"):
        assert score(PairwiseIdentification(kind, pairs_per_batch=10), x, x) == 1.0
    # scalar features: prediction i against targets (0, 1, 3), by squared error
    preds, targets = torch.tensor([[0.9], [1.1], [1.8]]), torch.tensor([[0.0], [1.0], [3.0]])
    # 0.9: own 0.81 beats 4.41 only -> 1/2; 1.1: own 0.01 beats both -> 1; 1.8: own 1.44 beats 3.24 only -> 1/2
    assert pairwise_identification(preds, targets, "mse").item() == pytest.approx(2 / 3)
    # pcc on 3-d features: p0 = t0, p1 = t2 (a wrong match), p2 = t2
    t = torch.tensor([[1.0, 2.0, 3.0], [1.0, 3.0, 2.0], [3.0, 2.0, 1.0]])
    p = torch.stack([t[0], t[2], t[2]])
    # p1 vs own t1: r = -0.5, beats t0 (r = -1), loses to t2 (r = 1) -> 1/2; p0, p2: own r = 1 -> 1
    assert pairwise_identification(p, t, "pcc").item() == pytest.approx((1 + 0.5 + 1) / 3)


def test_ssim_pairwise_matches_rowwise_batching():
    x, y = images(5), images(5, seed=1)
    assert score(PairwiseIdentification("ssim", pairs_per_batch=1), x, y) == pytest.approx(
        score(PairwiseIdentification("ssim", pairs_per_batch=1000), x, y)
    )


def colour_classifier():
    """Logits of 10 classes from the mean colour: classes 0-2 are red/green/blue, 3-9 never win."""
    linear = nn.Linear(3, 10, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.cat([torch.eye(3), -torch.ones(7, 3)]))
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)


def test_classifier_n_way_top1():
    red, green = torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 8, 8)
    red[:, 0], green[:, 1] = 1.0, 1.0
    assert score(ClassifierNWayTop1(colour_classifier(), n_way=10), red, red) == 1.0
    # green reconstruction of a red image: class 0 (logit 0) loses to green (1) and ties blue (0)
    assert score(ClassifierNWayTop1(colour_classifier(), n_way=10), green, red) == 0.0
    # 2-way: fails only when the distractor is one of those 2 of the 9 other classes
    assert score(ClassifierNWayTop1(colour_classifier(), n_way=2), green, red) == pytest.approx(7 / 9)
    sampled = score(ClassifierNWayTop1(colour_classifier(), n_way=2, trials=500), green, red)
    assert abs(sampled - 7 / 9) < 0.04


def test_ddp_style_merge_equals_single_instance():
    g = torch.Generator().manual_seed(1)
    preds, targets = torch.randn(60, 8, generator=g), torch.randn(60, 8, generator=g)
    imgs_p, imgs_t = images(8), images(8, seed=2)
    cases = [
        (lambda: NWayIdentification(n_way=5), preds, targets),
        (lambda: NWayIdentification(n_way=5, trials=10), preds, targets),
        (lambda: PixCorr(), imgs_p, imgs_t),
        (lambda: SSIM(), imgs_p, imgs_t),
    ]
    for make, p, t in cases:
        half = len(p) // 2
        first, second = make(), make()
        first.update(p[:half], t[:half])
        second.update(p[half:], t[half:])
        second.merge_state(first)  # incoming state first: rank order, as the DDP gather concatenates
        assert second.compute().item() == pytest.approx(score(make(), p, t), abs=1e-6)


@pytest.fixture(scope="module")
def random_alexnet_home(tmp_path_factory):
    """A TORCH_HOME holding a randomly initialised AlexNet under torchvision's checkpoint name."""
    home = tmp_path_factory.mktemp("torch_home")
    path = home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(alexnet(weights=None).state_dict(), path)
    return home


def test_perceptual_metrics_report_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert not any(available_perceptual_metrics().values())
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth") as err:
        LPIPSMetric()
    assert str(tmp_path / "hub" / "checkpoints") in str(err.value)
    suite = mindeye_feature_metrics(images(3), images(3))
    assert suite.values == {}
    assert set(suite.skipped) == {"alexnet2", "alexnet5", "inception", "effnet", "swav", "clip"}
    assert "swav_800ep_pretrain.pth.tar" in suite.skipped["swav"]


def test_perceptual_metrics_with_local_alexnet(random_alexnet_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(random_alexnet_home))
    assert checkpoint_path("https://x/alexnet-owt-7be5be79.pth").is_file()
    assert available_perceptual_metrics()["lpips_alex"] and not available_perceptual_metrics()["swav"]
    x = images(3, size=64)
    metric = LPIPSMetric()
    assert score(metric, x, x) == pytest.approx(0, abs=1e-6)
    metric.reset()
    assert score(metric, images(3, size=64, seed=1), x) > 0
    suite = mindeye_feature_metrics(x, x, clip_embed=lambda b: b.flatten(1)[:, :50])
    assert suite.values == {"alexnet2": 1.0, "alexnet5": 1.0, "clip": 1.0}
    assert set(suite.skipped) == {"inception", "effnet", "swav"}
