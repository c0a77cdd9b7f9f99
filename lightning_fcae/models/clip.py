"""Frozen open_clip models: loading (local checkpoint or open_clip tag), preprocessing, and the features
stage 2 aligns the fMRI encoder to.

CLIP is never trained after loading, so :class:`FrozenClip` pins it in eval mode with no trainable
parameters; gradients still flow *through* it to its inputs. Weights come from a local file (the only
option on an offline machine) or an open_clip pretrained tag; a failed download becomes a
:class:`MissingWeightsError` that says what to fetch and where to put it.

The package ships its own open_clip configs (``lightning_fcae/model_configs/clip``), registered on
import: ``fcae-clip-tiny`` for unit tests and ``fcae-clip-small``, the synthetic benchmark's CLIP
stand-in trained by :class:`lightning_fcae.stages.clip_pretrain.ClipPretrain`. Both use embed dim 512,
like ViT-B-32, so every later stage is shaped as in the paper.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .checkpoints import check_weights_file, export_fix
from .torchscript import UnsafeArchiveError, is_torchscript_archive, read_torchscript_tensors

log = logging.getLogger(__name__)


class _DropRandomInitNotice(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... Model initialized randomly"."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def create_random_model(model_name: str, **kwargs) -> nn.Module:
    """``open_clip.create_model`` without weights, for a model meant to start random (a CLIP trained
    from scratch, a test model): open_clip's notice that it was initialised randomly (on the root
    logger) would only alarm there."""
    notice = _DropRandomInitNotice()
    logging.getLogger().addFilter(notice)
    try:
        return open_clip.create_model(model_name, **kwargs)
    finally:
        logging.getLogger().removeFilter(notice)


CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs" / "clip"
open_clip.add_model_config(CONFIG_DIR)


class MissingWeightsError(FileNotFoundError):
    """CLIP weights are neither on disk nor downloadable; the message says what to fetch and where."""


def preprocess(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``[b, 3, H, W]`` in [0, 1] -> CLIP input ``[b, 3, size, size]``.

    open_clip's eval transform on tensors: shorter side resized (bicubic, antialiased), centre crop,
    normalised with the model's mean/std ``[1, 3, 1, 1]``. Done on the batch so it runs on the GPU.
    """
    if images.shape[-2:] != (size, size):
        images = TF.resize(images, size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        images = TF.center_crop(images, size).clamp(0, 1)  # bicubic overshoots [0, 1] at edges
    return (images - mean) / std


def preprocess_constants(model: nn.Module) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(image size, mean ``[1, 3, 1, 1]``, std) of an open_clip model, open_clip's defaults if unset."""
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    return int(size), torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


def encode_captions(model: nn.Module, tokenizer, captions: list[list[str]]) -> torch.Tensor:
    """``[b, d]``: each caption embedded and L2-normalised, averaged per sample, renormalised.

    Averaging unit vectors weighs every caption equally whatever its length; the renormalised mean is
    the sample's text target (NSD images have 1-3 COCO captions that all describe the same scene).
    """
    if not captions or any(len(caps) == 0 for caps in captions):
        raise ValueError("every sample needs at least one caption")
    device = model.logit_scale.device
    tokens = tokenizer([c for caps in captions for c in caps]).to(device)  # n l
    embeds = F.normalize(model.encode_text(tokens), dim=-1)  # n d
    means = torch.stack([e.mean(0) for e in embeds.split([len(caps) for caps in captions])])  # b d
    return F.normalize(means, dim=-1)


def clip_token_grid(model_name: str) -> tuple[int, int]:
    """``(T, D)`` of :meth:`FrozenClip.image_tokens` for an open_clip architecture, read from its config
    without building it: ``T = (image_size / patch_size)^2 + 1`` (the patches and the pooled token),
    ``D`` the embedding width (ViT-B-32: 50 x 512; fcae-clip-small: 65 x 512; fcae-clip-demo: 17 x 512)."""
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"unknown CLIP model {model_name!r}; open_clip knows {open_clip.list_models()}")
    vision = cfg["vision_cfg"]
    side = vision["image_size"] // vision["patch_size"]
    return side * side + 1, cfg["embed_dim"]


def resolve_clip_grid(model_name: str | None, tokens: int | None, dim: int | None) -> tuple[int, int]:
    """The CLIP token grid ``T x D`` a stage works on: derived from ``model_name`` where a value is None
    (so a config names its CLIP once), and where both are given they must agree."""
    if model_name is None:
        if tokens is None or dim is None:
            raise ValueError(
                "the CLIP token grid is unknown: set clip_model (the grid follows from it) or clip_tokens "
                "and clip_dim"
            )
        return tokens, dim
    derived = clip_token_grid(model_name)
    grid = (tokens or derived[0], dim or derived[1])
    if grid != derived:
        raise ValueError(
            f"clip_tokens x clip_dim {grid[0]} x {grid[1]} disagree with clip_model {model_name} "
            f"({derived[0]} x {derived[1]}): leave them unset, they follow from clip_model"
        )
    return grid


class FrozenClip(nn.Module):
    """An open_clip model that stays frozen and in eval mode, with its preprocessing and tokenizer.

    Only ViT image towers with token pooling (``tok``/``avg``) are supported: they are what gives the
    ``[b, T, D]`` token features stage 2 aligns to: T = patches + 1, D = the model's embed dim
    (ViT-B-32: T = 7 * 7 + 1 = 50, D = 512; ViT-L-14: T = 257, D = 768; fcae-clip-*: D = 512).
    """

    def __init__(
        self,
        model: nn.Module,
        model_name: str,
        pretrained: str | None = None,
        checkpoint: Path | None = None,
    ):
        super().__init__()
        visual = getattr(model, "visual", None)
        if (
            not isinstance(visual, VisionTransformer)
            or visual.attn_pool is not None
            or visual.pool_type == "none"
            or visual.proj is None
        ):
            raise ValueError(
                f"CLIP model {model_name!r}: image_tokens needs an open_clip VisionTransformer with cls/avg "
                "pooling and a projection (e.g. ViT-B-32, ViT-L-14); timm, ResNet and attention-pooled "
                "towers are not supported"
            )
        self.model = model.eval().requires_grad_(False)
        self.model_name, self.pretrained, self.checkpoint = model_name, pretrained, checkpoint
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.image_size, mean, std = preprocess_constants(model)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def train(self, mode: bool = True) -> FrozenClip:
        """Always eval: a parent's ``.train()`` must not switch on dropout in a frozen target."""
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        return self.model.visual.output_dim

    @property
    def num_tokens(self) -> int:
        """T of :meth:`image_tokens`: the pooled token plus one per patch."""
        grid = self.model.visual.grid_size
        return grid[0] * grid[1] + 1

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return preprocess(images, self.image_size, self.mean, self.std)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``[b, 3, H, W]`` in [0, 1] -> ``[b, T, D]`` token features in CLIP's joint embedding space.

        Token 0 is the tower's pooled output after ``ln_post`` and ``proj`` (the cls token for the usual
        ``tok`` pooling), i.e. exactly the unnormalised image embedding: ``F.normalize(tokens[:, 0])``
        equals :meth:`image_embed`. Tokens 1.. are the patch tokens in raster order through the same
        ``ln_post`` and ``proj``, so all T tokens live in the D-dim space the text embeddings share.
        """
        visual = self.model.visual
        previous, visual.output_tokens = visual.output_tokens, True  # public forward, any open_clip >= 2.24
        try:
            pooled, patches = visual(self.preprocess(images))  # b d, b n w
        finally:
            visual.output_tokens = previous
        if visual.final_ln_after_pool:  # ln_post then went to the pooled token only
            patches = visual.ln_post(patches)
        return torch.cat([pooled[:, None], patches @ visual.proj], dim=1)  # b t d

    def image_embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[b, D]``: the L2-normalised CLIP image embedding."""
        return F.normalize(self.model.encode_image(self.preprocess(images)), dim=-1)

    def text_embed(self, captions: list[list[str]]) -> torch.Tensor:
        """``[b, D]``: the renormalised mean of each sample's L2-normalised caption embeddings."""
        return encode_captions(self.model, self.tokenizer, captions)


def _download_hint(model_name: str, tag: str, cfg: dict) -> str:
    """What to fetch for an open_clip tag, and how to point lightning-fcae at it."""
    repo, filename = os.path.split(cfg.get("hf_hub", ""))  # open_clip: 'org/repo/' means the default file
    if repo:
        source = f"https://huggingface.co/{repo}/resolve/main/{filename or 'open_clip_model.safetensors'}"
        source += f" (Hugging Face repo {repo}" + (
            "; open_clip_pytorch_model.bin works too)" if not filename else ")"
        )
    else:
        source = cfg.get("url", "")
    # one name per weights, whichever architecture name asks: experiments/paper.yaml expects this one
    local = f"checkpoints/clip/{model_name.removesuffix('-quickgelu')}-{tag}{Path(source.split()[0]).suffix}"
    hint = (
        f"could not download the open_clip weights {model_name} / {tag!r} (is this machine offline?). "
        f"On a machine with internet download {source}, copy it to {local} and set clip_pretrained: {local}"
    )
    if cfg.get("quick_gelu") and f"{model_name}-quickgelu" in open_clip.list_models():
        hint += f" and clip_model: {model_name}-quickgelu (these weights use QuickGELU)"
    if tag == "openai" and cfg.get("url") and repo:  # OpenAI's own release, a TorchScript archive
        hint += f". OpenAI's TorchScript file {cfg['url']} loads as well"
    return hint + ". A local file loads offline."


class QuickGeluWarning(UserWarning):
    """OpenAI's CLIP weights (trained with QuickGELU) go into an architecture that uses GELU: they load,
    since the activation has no weights, but every feature comes out slightly wrong."""


def uses_quick_gelu(model_name: str) -> bool:
    return bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))


def warn_if_openai_without_quickgelu(model_name: str, path: Path) -> None:
    """OpenAI's weights are recognised by their format (a TorchScript archive, OpenAI's own release) or
    their name (``openai`` in it, as the offline hint names the file); other files cannot be told apart."""
    if uses_quick_gelu(model_name) or f"{model_name}-quickgelu" not in open_clip.list_models():
        return
    if "openai" in path.name.lower() or is_torchscript_archive(path):
        warnings.warn(
            f"CLIP weights {path} look like OpenAI's, which were trained with QuickGELU, but clip_model "
            f"{model_name} uses GELU: its features will be slightly off. Set clip_model: {model_name}-quickgelu",
            QuickGeluWarning,
            stacklevel=3,
        )


def load_torchscript_clip(model_name: str, path: Path) -> nn.Module:
    """An open_clip ``model_name`` with the weights of a TorchScript archive in OpenAI's layout (OpenAI's
    ``ViT-B-32.pt``), read without running the archive (:mod:`.torchscript`: ``torch.jit.load``, what
    open_clip's own ``load_openai_model`` uses, compiles and may run the archive's code). OpenAI's module
    names are open_clip's ``CLIP`` names; tensors the model does not hold (``attn_mask``,
    ``input_resolution``, ...) are left out, and a missing or misshapen one fails the strict load."""
    tensors = read_torchscript_tensors(path)
    logging.getLogger().addFilter(_random_init_notice)  # the weights come right after
    try:
        model = open_clip.create_model(model_name)
    finally:
        logging.getLogger().removeFilter(_random_init_notice)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise RuntimeError(
            f"the TorchScript archive holds no {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: "
            "not an OpenAI CLIP of this architecture"
        )
    model.load_state_dict({k: tensors[k] for k in expected}, strict=True)  # fp16 in OpenAI's file: cast
    return model


def _random_init_notice(record: logging.LogRecord) -> bool:
    """Drops open_clip's "Model initialized randomly" while :func:`load_torchscript_clip` builds the model."""
    return "initialized randomly" not in record.getMessage()


def load_clip(model_name: str, pretrained: str | None, cache_dir: str | None = None) -> FrozenClip:
    """A frozen open_clip model on CPU.

    Args:
        model_name: an open_clip config name (``ViT-B-32``, ``fcae-clip-small``, ...).
        pretrained: a local checkpoint file (an open_clip state dict: .safetensors, .bin, .pt; or a
            TorchScript archive in OpenAI's layout, such as OpenAI's ``ViT-B-32.pt``, read without running
            it), an open_clip tag (``openai``, ``laion2b_s34b_b79k``; downloaded when online), or None for
            random weights (tests only).
        cache_dir: open_clip's download cache for tags.

    Raises:
        MissingWeightsError: the file does not exist, or the tag could not be downloaded.
    """
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown CLIP model {model_name!r}; open_clip knows {open_clip.list_models()}")
    if pretrained is None:
        log.warning("CLIP %s with random weights (pretrained=None): only meaningful in tests", model_name)
        return FrozenClip(create_random_model(model_name), model_name)
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:  # not a tag of this model: a local file
        path = Path(pretrained).expanduser()
        if not path.is_file():
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            known = (
                f" or one of its open_clip tags {tags}"
                if tags
                else " (train fcae-clip-* weights with ClipPretrain)"
            )
            raise MissingWeightsError(
                f"CLIP checkpoint {path} does not exist: clip_pretrained for {model_name} must be a local file{known}"
            )
        check_weights_file(path, export_fix(path))
        warn_if_openai_without_quickgelu(model_name, path)
        try:
            if is_torchscript_archive(path):  # torch.load(weights_only=True), open_clip's loader, refuses it
                model = load_torchscript_clip(model_name, path)
            else:
                model = open_clip.create_model(model_name, pretrained=str(path))
        except (AssertionError, RuntimeError) as exc:  # open_clip's shape checks, load_state_dict
            raise ValueError(
                f"CLIP checkpoint {path} does not fit {model_name} ({exc}): was it trained as another "
                "architecture? clip_model must name the architecture the weights were trained as"
            ) from exc
        except UnsafeArchiveError as exc:
            raise ValueError(
                f"CLIP checkpoint {path} is a TorchScript archive holding more than tensors ({exc}): refused "
                "rather than run; a state dict (.safetensors, .bin) of the same weights loads"
            ) from exc
        return FrozenClip(model, model_name, pretrained, checkpoint=path)
    try:
        local = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as exc:  # hub/url errors have no common base class
        raise MissingWeightsError(_download_hint(model_name, pretrained, cfg) + f"\n(cause: {exc})") from exc
    keys = ("mean", "std", "interpolation", "resize_mode")
    model = open_clip.create_model(
        model_name,
        pretrained=local,
        force_quick_gelu=bool(cfg.get("quick_gelu", False)),  # openai weights need it; a mismatch only warns
        force_preprocess_cfg={k: cfg[k] for k in keys if k in cfg},
    )
    return FrozenClip(model, model_name, pretrained)
