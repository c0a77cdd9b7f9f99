"""``lightning-fcae upgrade-checkpoint CKPT``: add the ``models`` record to a checkpoint written before
checkpoints recorded their models (and, for stage 3, drop the frozen LDM weights it then duplicated).

The LightningModule is rebuilt from the checkpoint's hyper-parameters as the old code did (stage 3 needs
its stage-2 checkpoint and LDM folder where they were), its weights loaded strictly, and its own
``on_save_checkpoint`` writes the new record. The original is kept as ``CKPT.bak``; the new file
replaces it by a rename, so an interrupted upgrade leaves the original in place.
"""

from __future__ import annotations

import importlib
import inspect
import os
import shutil
import sys
from pathlib import Path

import torch

from ..models.factory import CheckpointFormatError, model_entry, read_checkpoint
from ..models.sizes import config_objects
from ..parsers import upgrade_checkpoint_parser

# the class each stage's checkpoint keys identify, for checkpoints made without LightningCLI's _class_path
STAGE_CLASSES = {
    "conditioner.": "lightning_fcae.stages.diffusion.LDMFinetune",
    "aligner.": "lightning_fcae.stages.align.FCAEAlign",
}
STAGE1_CLASSES = {
    "regressor": "lightning_fcae.stages.pretrain.FCAEPretrain",
    "self_contrast_weight": "lightning_fcae.stages.pretrain.DCMAEPretrain",
}


def module_class(checkpoint: dict) -> type:
    """The LightningModule class that wrote ``checkpoint``."""
    hparams = checkpoint.get("hyper_parameters", {})
    path = hparams.get("_class_path")
    if path is None:
        keys = checkpoint["state_dict"]
        path = next(
            (cls for prefix, cls in STAGE_CLASSES.items() if any(k.startswith(prefix) for k in keys)), None
        )
    if path is None and "encoder" in hparams:
        default = "lightning_fcae.stages.pretrain.MAEPretrain"
        path = next((cls for key, cls in STAGE1_CLASSES.items() if key in hparams), default)
    if path is None:
        raise CheckpointFormatError("not a checkpoint of a lightning-fcae stage (no model hyper-parameters)")
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _stage1_entry(old: dict) -> dict:
    """An old stage-2 checkpoint's ``stage1`` hyper-parameters (``kind`` + stage-1 hyper-parameters) as a
    model record."""
    from .pretrain import DCMAEPretrain, FCAEPretrain, MAEPretrain

    cls = {"fcae": FCAEPretrain, "mae": MAEPretrain, "dcmae": DCMAEPretrain}[old["kind"]]
    # the class's own arguments and those it passes on to its bases (``**kwargs``)
    names = {
        name
        for c in cls.__mro__
        if "__init__" in vars(c)
        for name in inspect.signature(c.__init__).parameters
    }
    args = {k: v for k, v in old.items() if k in names} | (
        {"init_ckpt": None} if "init_ckpt" in names else {}
    )
    return model_entry(cls(**args).model)


def upgrade(path: str | Path) -> Path | None:
    """Rewrite ``path`` (a link: its target) with a ``models`` record; None when it has one already.
    Returns the backup's path."""
    path = Path(path).resolve()
    checkpoint = read_checkpoint(path)
    if "models" in checkpoint:
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # in memory: the file is replaced
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    # the architecture is recorded: follow no other stage-1 file (vis-dec phase 2) and load no CLIP
    hparams |= {k: None for k in ("init_ckpt", "clip_model") if k in hparams}
    for renamed in ("live_clip_model", "live_clip_pretrained"):  # stage 2's CLIP before clip_model
        hparams.pop(renamed, None)
    if isinstance(hparams.get("stage1"), dict) and "kind" in hparams["stage1"]:  # stage 2, old record
        hparams["stage1"] = _stage1_entry(hparams["stage1"])
    module = module_class(checkpoint)(**config_objects(hparams))
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    module.on_save_checkpoint(checkpoint)
    if "ldm" in checkpoint:  # relative to where the file lies
        checkpoint["ldm"]["relative"] = os.path.relpath(checkpoint["ldm"]["path"], path.parent)
    backup = path.with_name(path.name + ".bak")
    shutil.copy2(path, backup)
    tmp = path.with_name(path.name + ".upgrade")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
    return backup


def main(argv: list[str] | None = None) -> int:
    args = upgrade_checkpoint_parser().parse_args(argv)
    for path in args.checkpoints:  # stage 3 reads its stage-2 file: upgrade that first
        try:
            backup = upgrade(path)
        except (CheckpointFormatError, FileNotFoundError, ValueError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            return 2
        print(
            f"{path}: already records its models"
            if backup is None
            else f"{path}: upgraded (original: {backup})"
        )
    return 0
