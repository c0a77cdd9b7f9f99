"""Perceptual metrics that need pretrained networks, loaded from local files only.

The project's machines have no internet. torchvision and torch.hub look for checkpoints in
``$TORCH_HOME/hub/checkpoints/<file name of the download URL>`` and only download when the file is
absent, so every metric here first checks that path and, when the file is missing, says which file
to put there (:class:`MissingWeightsError`) instead of trying the network.

The MindEye feature suite (Scotti et al. 2023) follows its ``Reconstruction_Metrics`` notebook: the
image is resized (short side, bilinear; antialiased here, as current torchvision does) and
ImageNet-normalised, one layer is flattened, then either 2-way identification by Pearson correlation
(higher is better, chance 0.5) or the mean correlation distance ``1 - r`` between each reconstruction
and its image (lower is better).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import lpips
import torch
from torch import Tensor, nn
from torchmetrics.functional import pearson_corrcoef
from torchvision.models import (
    AlexNet_Weights,
    EfficientNet_B1_Weights,
    Inception_V3_Weights,
    SqueezeNet1_1_Weights,
    VGG16_Weights,
    WeightsEnum,
    alexnet,
    efficientnet_b1,
    inception_v3,
    resnet50,
)
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.transforms.v2 import functional as TF

from lightning_fcae.metrics.identification import pairwise_identification
from lightning_fcae.metrics.image import MeanOfScores, check_images

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SWAV_URL = "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar"
# lpips ships its own linear-layer weights; only the torchvision trunk has to be provided.
LPIPS_BACKBONES = {
    "alex": AlexNet_Weights.IMAGENET1K_V1,
    "vgg": VGG16_Weights.IMAGENET1K_V1,
    "squeeze": SqueezeNet1_1_Weights.IMAGENET1K_V1,
}


class MissingWeightsError(FileNotFoundError):
    """A pretrained checkpoint is not on disk; the message names the file, its place and its source."""

    def __init__(self, what: str, url: str):
        path = checkpoint_path(url)
        super().__init__(
            f"{what} needs the checkpoint {path.name} at {path} (torch hub dir {path.parent.parent}, set by "
            f"TORCH_HOME). Nothing is downloaded here: fetch {url} elsewhere and copy it there."
        )


def checkpoint_path(url: str) -> Path:
    """Where torchvision / torch.hub cache the checkpoint downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _require(what: str, url: str) -> None:
    if not checkpoint_path(url).is_file():
        raise MissingWeightsError(what, url)


class LPIPSMetric(MeanOfScores):
    """Mean LPIPS (v0.1, Zhang et al. 2018) between reconstructions and images, ``[b, 3, H, W]`` in [0, 1];
    lower is better. Raises :class:`MissingWeightsError` when the trunk checkpoint is absent."""

    higher_is_better = False

    def __init__(self, net: str = "alex", **kwargs):
        super().__init__(**kwargs)
        _require(f"LPIPS({net})", LPIPS_BACKBONES[net].url)
        with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=True`
            warnings.simplefilter("ignore")
            self.lpips = lpips.LPIPS(net=net, verbose=False).requires_grad_(False)

    @torch.no_grad()
    def _scores(self, preds: Tensor, target: Tensor) -> Tensor:
        check_images(preds, target)
        self.lpips.eval()  # its linear layers carry dropout; a parent's .train() must not switch it on
        return self.lpips(preds.float(), target.float(), normalize=True).flatten()  # b


def _swav_resnet50(weights: str) -> nn.Module:
    """facebookresearch/swav's torch.hub ``resnet50`` without the hub repo: a torchvision ResNet-50
    with ``fc`` removed, loaded from the local checkpoint (its ``module.`` prefixes stripped)."""
    model = resnet50(weights=None)
    model.fc = nn.Identity()
    state = torch.load(checkpoint_path(weights), map_location="cpu", weights_only=True)
    missing, _ = model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=False)
    if missing:
        raise ValueError(
            f"{checkpoint_path(weights)} is not a SwAV ResNet-50 checkpoint (missing {missing[:3]})"
        )
    return model


class FeatureSpec(NamedTuple):
    builder: Callable[..., nn.Module]
    weights: WeightsEnum | str  # torchvision weights, or the URL of a torch.hub checkpoint (SwAV)
    node: str  # layer passed to create_feature_extractor
    resize: int  # short side after MindEye's resize
    kind: str  # "2-way" (identification, higher better) or "distance" (1 - Pearson r, lower better)

    @property
    def url(self) -> str:
        return self.weights if isinstance(self.weights, str) else self.weights.url

    def build(self) -> nn.Module:
        _require(f"{self.builder.__name__} ({self.node})", self.url)
        if isinstance(self.weights, str):
            return self.builder(self.weights)
        return self.builder(weights=self.weights)  # torchvision loads the cached file, no download


# MindEye's feature metrics; CLIP 2-way takes the caller's model (mindeye_feature_metrics' clip_embed).
MINDEYE_FEATURES = {
    "alexnet2": FeatureSpec(alexnet, AlexNet_Weights.IMAGENET1K_V1, "features.4", 256, "2-way"),
    "alexnet5": FeatureSpec(alexnet, AlexNet_Weights.IMAGENET1K_V1, "features.11", 256, "2-way"),
    "inception": FeatureSpec(inception_v3, Inception_V3_Weights.IMAGENET1K_V1, "avgpool", 342, "2-way"),
    "effnet": FeatureSpec(efficientnet_b1, EfficientNet_B1_Weights.IMAGENET1K_V2, "avgpool", 255, "distance"),
    "swav": FeatureSpec(_swav_resnet50, SWAV_URL, "avgpool", 224, "distance"),
}


def available_perceptual_metrics() -> dict[str, bool]:
    """Which perceptual metrics have their checkpoints under the current ``TORCH_HOME``."""
    found = {f"lpips_{net}": checkpoint_path(w.url).is_file() for net, w in LPIPS_BACKBONES.items()}
    return found | {name: checkpoint_path(spec.url).is_file() for name, spec in MINDEYE_FEATURES.items()}


@dataclass
class FeatureSuite:
    """Results of :func:`mindeye_feature_metrics`: computed values, and why the others were skipped."""

    values: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


@torch.no_grad()
def _features(extract: Callable[[Tensor], Tensor], images: Tensor, batch_size: int, device) -> Tensor:
    return torch.cat(
        [extract(b.to(device)).flatten(1).float().cpu() for b in images.split(batch_size)]
    )  # n d


def _score(kind: str, preds: Tensor, target: Tensor) -> float:
    if kind == "2-way":
        return pairwise_identification(preds, target, "pcc").item()
    return (1 - pearson_corrcoef(preds.T, target.T)).mean().item()  # correlation distance per pair


def mindeye_feature_metrics(
    preds: Tensor,
    target: Tensor,
    clip_embed: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> FeatureSuite:
    """MindEye's high-level metrics on all ``[n, 3, H, W]`` reconstructions and images (in [0, 1]).

    AlexNet(2)/(5), InceptionV3 and CLIP are 2-way identifications, EfficientNet-B1 and SwAV mean
    correlation distances. A network whose checkpoint is absent is skipped, with the reason, never
    raised. ``clip_embed`` maps images to CLIP embeddings (MindEye: ViT-L/14), e.g.
    ``partial(clip_image_embeddings, clip_model)``; without it CLIP 2-way is skipped.
    """
    check_images(preds, target)
    device = device or preds.device
    suite = FeatureSuite()
    for name, spec in MINDEYE_FEATURES.items():
        try:
            model = spec.build()
        except MissingWeightsError as err:
            suite.skipped[name] = str(err)
            continue
        with warnings.catch_warnings():  # InceptionV3 traces extra (aux-logit) nodes in train mode only
            warnings.simplefilter("ignore", UserWarning)
            net = create_feature_extractor(model.eval(), [spec.node]).to(device)

        def extract(x: Tensor, net=net, spec=spec) -> Tensor:
            x = TF.resize(x, [spec.resize], antialias=True)
            return net(TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD))[spec.node]

        feats = [_features(extract, images, batch_size, device) for images in (preds, target)]
        suite.values[name] = _score(spec.kind, *feats)
    if clip_embed is None:
        suite.skipped["clip"] = "CLIP 2-way needs clip_embed (e.g. partial(clip_image_embeddings, model))"
    else:
        feats = [_features(clip_embed, images, batch_size, device) for images in (preds, target)]
        suite.values["clip"] = _score("2-way", *feats)
    return suite
