"""Rebuild any plain model from any stage's checkpoint, strictly, without a LightningModule.

Every stage writes, beside Lightning's ``state_dict``, a ``models`` entry naming each plain model it
trained, its class and the arguments that rebuild it (nanoGPT's ``model_args``; open_clip's factory)::

    checkpoint["models"] = {"model": {"class": "FCAE", "args": {...}}}                 stage 1
                           {"aligner": {"class": "FMRIAligner", "args": {...}}}        stage 2
                           {"aligner": ..., "conditioner": {"class": "ClipCondition"}} stage 3
                           (+ "lowlevel": {"class": "LowLevelDecoder"} with ``lowlevel: ridge``)

The key is the model's attribute in its LightningModule, so its weights are the ``state_dict`` entries
under ``"<key>."``. Loading is strict: a weight missing or left over is an error, never a silent
random layer. A checkpoint without the ``models`` entry (written by a development version, before the
entry existed) is a :class:`CheckpointFormatError` that says to retrain it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .align import FMRIAligner
from .checkpoints import check_checkpoint
from .condition import ClipCondition
from .dcmae import DCMAE, ImageGuidance
from .fcae import FCAE
from .linear_path import LowLevelDecoder
from .mae import MAE
from .sizes import config_objects
from .vit import FMRIEncoder


class CheckpointFormatError(ValueError):
    """A file that is not a checkpoint of this project, or one without the model asked for."""


def _dcmae(args: dict) -> DCMAE:
    guidance = args.get("guidance")
    if guidance is not None:
        guidance = ImageGuidance(**config_objects(guidance))
    return DCMAE(**config_objects({**args, "guidance": guidance}))


BUILDERS = {
    "FCAE": lambda args: FCAE(**config_objects(args)),
    "MAE": lambda args: MAE(**config_objects(args)),
    "DCMAE": _dcmae,
    "FMRIAligner": FMRIAligner.from_model_args,
    "ClipCondition": lambda args: ClipCondition(**args),
    "LowLevelDecoder": lambda args: LowLevelDecoder(**args),
}


def model_entry(model: nn.Module) -> dict:
    """``{"class", "args"}``: what :func:`build_model` needs to rebuild ``model`` (weights apart)."""
    name = type(model).__name__
    if name not in BUILDERS:
        raise TypeError(f"{name} is not a model the factory rebuilds ({', '.join(BUILDERS)})")
    if isinstance(
        model, ClipCondition | LowLevelDecoder
    ):  # diffusers ConfigMixins: their config is their args
        return {"class": name, "args": {k: v for k, v in model.config.items() if not k.startswith("_")}}
    return {"class": name, "args": model.model_args}


def build_model(entry: dict) -> nn.Module:
    """A randomly initialised model from a :func:`model_entry`."""
    if entry.get("class") not in BUILDERS:
        raise CheckpointFormatError(
            f"unknown model class {entry.get('class')!r}; known: {', '.join(BUILDERS)}"
        )
    return BUILDERS[entry["class"]](entry["args"])


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's dict (weights-only unpickling, memory-mapped: the weights are read when used)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    check_checkpoint(path, "re-run the stage that wrote it")  # cut off: named with the fix
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike for a non-checkpoint
        raise CheckpointFormatError(
            f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointFormatError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def checkpoint_models(checkpoint: dict, path: str | Path) -> dict[str, dict]:
    """The ``models`` entry of a checkpoint read by :func:`read_checkpoint`."""
    if "models" not in checkpoint:
        raise CheckpointFormatError(
            f"{path} was written by a development version of lightning-fcae, before checkpoints recorded "
            "their models: retrain it with the current version"
        )
    return checkpoint["models"]


def load_model(path: str | Path, part: str | None = None, checkpoint: dict | None = None) -> nn.Module:
    """The model ``part`` (``"model"``, ``"aligner"``, ``"conditioner"``; None: the only or first one) of a
    checkpoint, with its weights, strictly loaded, on CPU."""
    checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
    models = checkpoint_models(checkpoint, path)
    part = part or next(iter(models))
    if part not in models:
        raise CheckpointFormatError(f"{path} holds no {part!r} model (it holds {', '.join(models)})")
    model = build_model(models[part])
    prefix = f"{part}."
    state = {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state, strict=True)
    return model


def load_fmri_aligner(path: str | Path) -> FMRIAligner | None:
    """The stage-2/3 aligner (encoder + token map, + regressor in stage 2) of a checkpoint; None for a
    stage-1 checkpoint, which has no token map."""
    checkpoint = read_checkpoint(path)
    if "aligner" not in checkpoint_models(checkpoint, path):
        return None
    return load_model(path, "aligner", checkpoint)


def load_fmri_encoder(path: str | Path) -> FMRIEncoder:
    """The fMRI encoder of any stage's checkpoint (stage 1, 2 or 3) or of an exported pipeline folder: for
    people who want the embeddings only. ``encoder(fmri [b, V]) -> [b, 1 + n, d]`` (cls token first)."""
    path = Path(path)
    if path.is_dir():
        from .fmri_condition import FMRIConditionEncoder  # an exported FMRIReconstructionPipeline

        return FMRIConditionEncoder.from_pretrained(path, subfolder="fmri_encoder").aligner.encoder
    checkpoint = read_checkpoint(path)
    part = "aligner" if "aligner" in checkpoint_models(checkpoint, path) else "model"
    return load_model(path, part, checkpoint).encoder
