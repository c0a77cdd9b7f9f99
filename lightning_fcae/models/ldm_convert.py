"""CompVis latent-diffusion checkpoint -> diffusers LDM directory (the conversion behind
``lightning-fcae convert-ldm``, :mod:`lightning_fcae.cli.convert_ldm`).

The paper, like MinD-Vis, starts from a CompVis LDM (``configs/latent-diffusion/cin256-v2.yaml``: a vq-f4
first stage and a cross-attention UNet). Its checkpoint holds ``first_stage_model.*`` (the VQ) and
``model.diffusion_model.*`` (the UNet); the class-label encoder (``cond_stage_model.*``) is dropped, the
fMRI condition replaces it. Key maps come from diffusers' single-file loaders
(``convert_ldm_vae_checkpoint``, ``convert_ldm_unet_checkpoint``, ``create_unet_diffusers_config_from_ldm``);
the VQ only adds its codebook, which the KL-autoencoder map does not know. Both models are loaded with
``strict=True``, so an incomplete conversion fails loudly instead of leaving random weights.

Supported: VQ first stages without encoder/decoder attention (vq-f4; vq-f8 has some and is not) and
UNets with spatial transformers (every cross-attention LDM). Anything else raises NotImplementedError.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
import yaml
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
)

from .ldm import LDM, build_vq, save_ldm

VQ_PREFIX = "first_stage_model."
# How torch names a class its safe loader refuses only because it is not allowlisted; other refusals
# (garbage bytes, blocked modules such as os) are not something --trust-pickle should be used for.
_NOT_ALLOWLISTED = re.compile(r"GLOBAL (\S+) was not an allowed global by default")


def load_compvis_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a ``.ckpt`` (PyTorch Lightning 1.x pickle) or ``.safetensors`` file.

    Pickles load with ``weights_only=True``; old Lightning checkpoints that also pickle callback objects
    need ``trust_pickle`` (unpickling can execute arbitrary code: only for files from a known source).
    Only that case suggests ``--trust-pickle``: torch's own message for a corrupt file also advises
    ``weights_only=False``, which cannot fix it and would unpickle a file nobody vouched for, so it is
    not passed on.
    """
    path = Path(path)
    unreadable = f"{path}: not a readable {{}} file (corrupt, or the wrong file)"
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as exc:
            raise ValueError(unreadable.format("safetensors")) from exc
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except OSError:  # missing or unreadable: the file system's own message names the path
        raise
    except pickle.UnpicklingError as exc:
        if not trust_pickle and (refused := _NOT_ALLOWLISTED.search(str(exc))):
            raise ValueError(
                f"{path}: pickles {refused[1]}, which loading plain weights refuses. --trust-pickle "
                "(trust_pickle=True) unpickles the file in full, and unpickling can execute arbitrary code "
                "from it: pass it only for a checkpoint from a source you know (such as the official "
                "CompVis release, checked against its published hash)"
            ) from exc
        raise ValueError(unreadable.format("PyTorch checkpoint")) from exc
    except Exception as exc:  # a broken file fails wherever torch or pickle trips, with many types
        if trust_pickle and isinstance(exc, ImportError | AttributeError):
            raise ValueError(f"{path}: its pickled objects need code that is not installed ({exc})") from exc
        raise ValueError(unreadable.format("PyTorch checkpoint")) from exc
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint.get("state_dict", checkpoint)


def check_latent_diffusion_config(config: object, path: str | Path) -> None:
    """The keys the conversion reads, checked up front: any other YAML would fail as a bare KeyError."""
    node, trail = config, []
    for key in ("model", "params", "first_stage_config", "params", "ddconfig"):
        if not isinstance(node, dict) or key not in node:
            raise ValueError(
                f"{path}: no {'.'.join([*trail, key])}; expected a CompVis LatentDiffusion config "
                "(e.g. cin256-v2.yaml from the CompVis latent-diffusion repository)"
            )
        node, trail = node[key], [*trail, key]
    params = config["model"]["params"]
    if not isinstance(params.get("unet_config"), dict) or "params" not in params["unet_config"]:
        raise ValueError(f"{path}: no model.params.unet_config.params; not a LatentDiffusion config")


def vq_config_from_compvis(config: dict) -> dict:
    """diffusers VQModel kwargs from a CompVis LatentDiffusion config."""
    params = config["model"]["params"]
    first = params["first_stage_config"]
    if "VQModel" not in first.get("target", ""):
        raise NotImplementedError(
            f"first stage {first.get('target')!r}: only CompVis VQModel(Interface) converts"
        )
    dd = first["params"]["ddconfig"]
    if dd.get("attn_resolutions"):
        raise NotImplementedError(
            "VQ encoders/decoders with attention blocks (attn_resolutions) are not mapped"
        )
    return dict(
        in_channels=dd["in_channels"],
        out_channels=dd["out_ch"],
        block_out_channels=tuple(dd["ch"] * m for m in dd["ch_mult"]),
        layers_per_block=dd["num_res_blocks"],
        latent_channels=dd["z_channels"],
        num_vq_embeddings=first["params"]["n_embed"],
        vq_embed_dim=first["params"]["embed_dim"],
        sample_size=dd["resolution"],
        scaling_factor=float(params.get("scale_factor", 1.0)),
    )


def unet_config_from_compvis(config: dict, state_dict: dict, vq_factor: int) -> dict:
    """diffusers UNet2DConditionModel kwargs from a CompVis LatentDiffusion config."""
    unet = config["model"]["params"]["unet_config"]["params"]
    if not unet.get("use_spatial_transformer", False):
        raise NotImplementedError("only UNets with spatial transformers (cross-attention LDMs) are mapped")
    with warnings.catch_warnings():  # passing image_size is deprecated in diffusers but avoids a guess
        warnings.simplefilter("ignore", FutureWarning)
        kwargs = create_unet_diffusers_config_from_ldm(
            config, state_dict, image_size=unet["image_size"] * vq_factor
        )
    if unet.get("use_scale_shift_norm", False):
        kwargs["resnet_time_scale_shift"] = "scale_shift"
    heads_from_width = unet.get("num_head_channels", -1)
    if heads_from_width and heads_from_width > 0:  # heads = channels / head width, per block (CompVis)
        kwargs["attention_head_dim"] = [c // heads_from_width for c in kwargs["block_out_channels"]]
    return kwargs


def scheduler_from_compvis(config: dict) -> DDPMScheduler:
    """The DDPM training schedule: CompVis "linear" is linear in sqrt(beta) (diffusers' scaled_linear)."""
    params = config["model"]["params"]
    schedules = {"linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
    predictions = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
    schedule, parameterization = params.get("beta_schedule", "linear"), params.get("parameterization", "eps")
    if schedule not in schedules or parameterization not in predictions:
        raise NotImplementedError(f"beta_schedule {schedule!r} / parameterization {parameterization!r}")
    return DDPMScheduler(
        num_train_timesteps=params.get("timesteps", 1000),
        beta_start=params.get("linear_start", 1e-4),
        beta_end=params.get("linear_end", 2e-2),
        beta_schedule=schedules[schedule],
        clip_sample=False,
        prediction_type=predictions[parameterization],
        steps_offset=1,
    )


def _load_strict(model: torch.nn.Module, state_dict: dict, what: str) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"the converted {what} does not match the model its config describes: {exc}"
        ) from exc


def convert_compvis_ldm(
    ckpt_path: str | Path,
    config_yaml: str | Path,
    out_dir: str | Path,
    extract_ema: bool = False,
    trust_pickle: bool = False,
    overwrite: bool = False,
) -> Path:
    """Convert a CompVis LDM checkpoint + its YAML config into ``out_dir/{vqvae,unet,scheduler}``."""
    for what, path in (("checkpoint", ckpt_path), ("config", config_yaml)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{what} {path} does not exist or is not a file")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (overwrite=True / --overwrite to replace it)")
    try:
        config = yaml.safe_load(Path(config_yaml).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_yaml}: not a readable YAML config ({exc})") from exc
    state = load_compvis_state_dict(ckpt_path, trust_pickle)
    if not any(k.startswith(VQ_PREFIX) for k in state):
        raise ValueError(f"{ckpt_path}: no {VQ_PREFIX}* keys; is this a CompVis LatentDiffusion checkpoint?")
    check_latent_diffusion_config(config, config_yaml)

    vq_kwargs = vq_config_from_compvis(config)
    vq = build_vq(vq_kwargs)
    vq_state = convert_ldm_vae_checkpoint(state, dict(vq.config))
    vq_state["quantize.embedding.weight"] = state[VQ_PREFIX + "quantize.embedding.weight"]
    _load_strict(vq, vq_state, "VQ autoencoder")

    unet_kwargs = unet_config_from_compvis(config, state, 2 ** (len(vq_kwargs["block_out_channels"]) - 1))
    unet = UNet2DConditionModel(**unet_kwargs)
    _load_strict(unet, convert_ldm_unet_checkpoint(state, unet_kwargs, extract_ema=extract_ema), "UNet")

    return save_ldm(LDM(vq, unet, scheduler_from_compvis(config)), out)
