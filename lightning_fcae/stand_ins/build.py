"""``make stand-ins``: write the folder the repository ships from the synthetic benchmark's trained stand-ins.

The stand-ins are trained by the pipeline's own stages (:data:`~lightning_fcae.stand_ins.STAND_IN_STAGES`:
``clip_pretrain``, ``ldm_vq``, ``ldm_unet``, plus the ``classifier`` that judges the checks), with the
budgets of the plan (``experiments/demo.yaml``), into a run folder (``results/stand-ins``; a rerun resumes
or skips finished stages: :meth:`lightning_fcae.runs.pipeline.Pipeline.train_stand_ins`). :func:`ship`
then writes their float16 copies into the stand-ins folder with the configs that made them, runs the
checks on the shipped files, writes a card per model and, last, the manifest of hashes that every load
verifies.
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from ..data.schema import Manifest
from ..files.atomic import atomic_folder
from ..models.ldm import load_ldm, save_ldm
from ..models.scene_classifier import SceneClassifier
from . import STAND_IN_STAGES
from .cards import Training, write_card
from .checks import format_checks, run_checks
from .shipped import StandIns, dataset_identity, half_state_dict, load_stand_ins, write_manifest

COMMAND = "lightning-fcae stand-ins train --plan {plan} --data {data} --runs {runs} --out {out}"


def _half(module: nn.Module) -> nn.Module:
    """float16 in place, through ``nn.Module.to`` (diffusers' own ``to`` warns about any cast)."""
    return nn.Module.to(module, torch.float16)


SHIPPED_PARTS = ("clip", "ldm", "classifier", "checks.json", "manifest.json")  # what ship() writes


def ship(runs: Path, out: Path, data_dir: str, command: str) -> StandIns:
    """Write the stand-ins folder ``out`` from the finished runs in ``runs`` (see the module doc), whole or
    not at all: built beside it and swapped in (:func:`~lightning_fcae.files.atomic.atomic_folder`)."""
    shared = runs / "shared"
    run_dirs = {name: shared / name for name in STAND_IN_STAGES}
    for run_dir in run_dirs.values():
        if not (run_dir / "done-fit.json").is_file():
            raise FileNotFoundError(f"{run_dir} has not finished: run `lightning-fcae stand-ins train` first")
    with atomic_folder(out) as folder:  # a kill mid-ship leaves the shipped folder as it was
        if out.is_dir():  # what this does not write (a note of the user's) comes along
            for entry in out.iterdir():
                if entry.name not in SHIPPED_PARTS:
                    (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, folder / entry.name)
        clip_config = yaml.safe_load((run_dirs["clip_pretrain"] / "run.yaml").read_text())
        clip_model = clip_config["model"]["init_args"]["architecture"]
        clip_dir = folder / "clip"
        clip_dir.mkdir(parents=True)
        state = torch.load(shared / "clip.pt", map_location="cpu", weights_only=True)
        save_file(half_state_dict(state), clip_dir / f"{clip_model}.safetensors")
        shutil.copy(run_dirs["clip_pretrain"] / "run.yaml", clip_dir / "run.yaml")

        ldm = load_ldm(shared / "ldm")
        for module in (ldm.vq, ldm.unet, ldm.condition):
            _half(module)
        save_ldm(ldm, folder / "ldm")
        shutil.copy(run_dirs["ldm_vq"] / "run.yaml", folder / "ldm" / "vqvae" / "run.yaml")
        shutil.copy(run_dirs["ldm_unet"] / "run.yaml", folder / "ldm" / "unet" / "run.yaml")

        classifier = SceneClassifier.from_pretrained(shared / "classifier_export")
        _half(classifier).save_pretrained(folder / "classifier")
        shutil.copy(run_dirs["classifier"] / "run.yaml", folder / "classifier" / "run.yaml")

        dataset = dataset_identity(Manifest.load(data_dir))
        stand_ins = StandIns(
            folder,
            clip_model,
            clip_dir / f"{clip_model}.safetensors",
            folder / "ldm",
            folder / "classifier",
            dataset,
        )
        figures = run_checks(stand_ins, data_dir)
        (folder / "checks.json").write_text(json.dumps(figures, indent=2) + "\n")
        checks = format_checks(figures).splitlines()
        date = datetime.date.today().isoformat()
        common = dict(dataset=dataset, command=command, checks=checks, date=date)
        weights = lambda folder: sorted(folder.glob("*.safetensors"))  # noqa: E731
        write_card(
            clip_dir,
            f"CLIP stand-in `{clip_model}`",
            "The frozen CLIP of stage 2 and of the CLIP scores, trained contrastively on image-caption pairs "
            "(`ClipPretrain`): no pretrained CLIP can be downloaded here.",
            [Training("clip_pretrain", run_dirs["clip_pretrain"])],
            {"clip_pretrain": clip_dir / "run.yaml"},
            weights(clip_dir),
            **common,
        )
        write_card(
            folder / "ldm" / "vqvae",
            "LDM stand-in: VQ-f4 autoencoder",
            "The LDM's VQ autoencoder (`LDMPretrain`, part `vq`): 32 px images -> 8x8x3 latents.",
            [Training("ldm_vq", run_dirs["ldm_vq"])],
            {"ldm_vq": folder / "ldm" / "vqvae" / "run.yaml"},
            weights(folder / "ldm" / "vqvae"),
            **common,
        )
        write_card(
            folder / "ldm" / "unet",
            "LDM stand-in: conditional UNet (+ condition encoder `ldm/condition`)",
            "The UNet stage 3 fine-tunes (`LDMPretrain`, part `unet`), conditioned through cross-attention and "
            "the time embedding on the CLIP stand-in's image tokens and caption embedding (`ClipCondition`).",
            [Training("ldm_unet", run_dirs["ldm_unet"])],
            {"ldm_unet": folder / "ldm" / "unet" / "run.yaml"},
            weights(folder / "ldm" / "unet") + weights(folder / "ldm" / "condition"),
            **common,
        )
        write_card(
            folder / "classifier",
            "Scene classifier (the judge of the checks)",
            "Names the shape and colour of a scene's largest object (`ClassifierPretrain`); only the checks "
            "use it.",
            [Training("classifier", run_dirs["classifier"])],
            {"classifier": folder / "classifier" / "run.yaml"},
            weights(folder / "classifier"),
            **common,
        )
        write_manifest(folder, clip_model, dataset)
    return load_stand_ins(out, data_dir)
