"""Low-level reconstruction metrics (the paper's Table 2 columns, MindEye conventions).

All image metrics take ``preds`` (reconstructions) and ``target`` (seen images) as float ``[b, 3, H, W]``
in ``[0, 1]``, score each pair and report the mean over images. The states are a running sum and a
count (``dist_reduce_fx="sum"``), so DDP sync, ``merge_state`` and per-batch updates all give the mean
over every image seen, whatever the sharding.

``size`` resizes both images to ``size x size`` (bilinear, antialiased) before scoring: MindEye
scores PixCorr and SSIM at 425 x 425 (the NSD stimulus resolution); ``None`` scores at the given
resolution, which is what we do unless a config asks for the MindEye number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.functional import pearson_corrcoef
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.transforms.v2 import functional as TF

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# skimage.color.rgb2gray (ITU-R BT.709 luma), the grayscale MindEye's SSIM is computed on.
LUMA_WEIGHTS = (0.2125, 0.7154, 0.0721)


def check_images(preds: Tensor, target: Tensor) -> None:
    """Raise unless ``preds`` and ``target`` are matching ``[b, 3, H, W]`` batches."""
    if preds.shape != target.shape or preds.ndim != 4 or preds.shape[1] != 3:
        raise ValueError(
            f"expected preds and target of equal shape [b, 3, H, W], got {tuple(preds.shape)} and "
            f"{tuple(target.shape)}"
        )


def to_luma(images: Tensor) -> Tensor:
    """``[b, 3, H, W]`` RGB -> ``[b, 1, H, W]`` grayscale with skimage's ``rgb2gray`` weights."""
    weights = images.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


class MeanOfScores(Metric):
    """Mean over samples of a per-sample score; subclasses implement ``_scores -> [b]``."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def _scores(self, preds: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, preds: Tensor, target: Tensor) -> None:
        scores = self._scores(preds, target)  # b
        self.total += scores.double().sum()
        self.count += scores.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count).float()


class _ImageMetric(MeanOfScores):
    def __init__(self, size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def update(self, preds: Tensor, target: Tensor) -> None:
        check_images(preds, target)
        if self.size is not None:
            preds, target = (TF.resize(x, [self.size, self.size], antialias=True) for x in (preds, target))
        super().update(preds.float(), target.float())


class PixCorr(_ImageMetric):
    """Pearson correlation between the flattened RGB pixels of each reconstruction and its image,
    averaged over images. MindEye flattens RGB at 425 x 425 (``size=425``); a constant image has no
    correlation and gives NaN."""

    higher_is_better = True

    def _scores(self, preds: Tensor, target: Tensor) -> Tensor:
        # pearson_corrcoef correlates columns: [3HW, b] -> b correlations
        return pearson_corrcoef(preds.flatten(1).T, target.flatten(1).T).reshape(-1)


class ImageMSE(_ImageMetric):
    """Mean squared pixel error of each image (over RGB and pixels, [0, 1] scale), averaged over images."""

    higher_is_better = False

    def _scores(self, preds: Tensor, target: Tensor) -> Tensor:
        return (preds - target).square().flatten(1).mean(1)


def ssim_per_image(preds: Tensor, target: Tensor, gaussian: bool = True) -> Tensor:
    """skimage-style SSIM of each ``[b, c, H, W]`` pair in [0, 1] -> ``[b]``, mean over channels.

    ``gaussian``: 11-tap gaussian window, sigma 1.5 (skimage ``gaussian_weights=True``); else skimage's
    default 7 x 7 uniform window. Like skimage, the mean skips the border whose window would leave the
    image, which torchmetrics otherwise fills by reflect padding. Unlike skimage's default, covariances
    are population ones (what MindEye asks for with ``use_sample_covariance=False``).
    """
    kernel = 11 if gaussian else 7
    _, full = structural_similarity_index_measure(
        preds,
        target,
        gaussian_kernel=gaussian,
        sigma=1.5,
        kernel_size=kernel,
        data_range=1.0,
        reduction="none",
        return_full_image=True,
    )  # b c H W
    pad = kernel // 2
    return full[..., pad:-pad, pad:-pad].mean((1, 2, 3))


class SSIM(_ImageMetric):
    """MindEye's SSIM: skimage ``structural_similarity`` on ``rgb2gray`` images with a gaussian window
    (sigma 1.5), population covariances and data_range 1, averaged over images; computed with
    torchmetrics' SSIM by :func:`ssim_per_image`."""

    higher_is_better = True

    def _scores(self, preds: Tensor, target: Tensor) -> Tensor:
        return ssim_per_image(to_luma(preds), to_luma(target))


class ClipScore(MeanOfScores):
    """The paper's "CLIP" column: mean cosine similarity between the CLIP image embeddings ``[b, d]`` of
    each reconstruction and of its image. Takes embeddings, so the CLIP model (and its weights) stay with
    the caller; :func:`clip_image_embeddings` computes them."""

    higher_is_better = True

    def _scores(self, preds: Tensor, target: Tensor) -> Tensor:
        if preds.shape != target.shape or preds.ndim != 2:
            raise ValueError(
                f"expected two [b, d] embeddings, got {tuple(preds.shape)}, {tuple(target.shape)}"
            )
        return F.cosine_similarity(preds.float(), target.float(), dim=1)


@torch.no_grad()
def clip_image_embeddings(
    model: nn.Module,
    images: Tensor,
    preprocess_size: int = 224,
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN,
    std: tuple[float, float, float] = OPENAI_CLIP_STD,
) -> Tensor:
    """``[b, 3, H, W]`` images in [0, 1] -> ``[b, d]`` float embeddings from ``model.encode_image``.

    Mirrors CLIP's own preprocessing on tensors: bicubic resize of the short side, centre crop,
    normalisation (OpenAI statistics by default; open_clip models list theirs in ``model.visual``).
    """
    x = TF.resize(images, [preprocess_size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    x = TF.normalize(TF.center_crop(x, [preprocess_size]).clamp(0, 1), list(mean), list(std))
    dtype = next(model.parameters()).dtype
    return model.encode_image(x.to(dtype)).float()
