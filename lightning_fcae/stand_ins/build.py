"""``make stand-ins``: train the synthetic benchmark's stand-ins and write the folder the repository ships.

The stand-ins are trained by the pipeline's own stages (``clip_pretrain``, ``ldm_vq``, ``ldm_unet``, plus
the ``classifier`` that judges the checks), with the budgets of the plan (``experiments/demo.yaml``), into
a run folder (``results/stand-ins``; a rerun resumes or skips finished stages). :func:`ship` then writes
their float16 copies into the stand-ins folder with the configs that made them, runs the checks on the
shipped files, writes a card per model and, last, the manifest of hashes that every load verifies.
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..data.schema import Manifest
from ..models.ldm import load_ldm, save_ldm
from ..models.scene_classifier import SceneClassifier
from ..pipeline import STAND_IN_STAGES, Pipeline
from ..progress import Progress
from ..run_lock import run_lock
from .cards import Training, write_card
from .checks import format_checks, run_checks
from .shipped import StandIns, dataset_identity, half_state_dict, load_stand_ins, write_manifest

COMMAND = "lightning-fcae stand-ins train --plan {plan} --data {data} --runs {runs} --out {out}"


def train(plan: dict, runs: Path, configs: Path) -> dict[str, Path]:
    """Fit every stand-in (skipping finished ones); returns the run folder of each."""
    pipeline = Pipeline(plan, runs, configs)
    tasks = pipeline.stand_in_tasks()
    pipeline.progress = Progress(pipeline.weigh(tasks))
    with run_lock(runs):
        pipeline.run_tasks(tasks)
    return {task.stage: task.stage_dir for task in tasks}


def _half(module: nn.Module) -> nn.Module:
    """float16 in place, through ``nn.Module.to`` (diffusers' own ``to`` warns about any cast)."""
    return nn.Module.to(module, torch.float16)


def ship(runs: Path, out: Path, data_dir: str, command: str) -> StandIns:
    """Write the stand-ins folder ``out`` from the finished runs in ``runs`` (see the module doc)."""
    shared = runs / "shared"
    run_dirs = {name: shared / name for name in STAND_IN_STAGES}
    for run_dir in run_dirs.values():
        if not (run_dir / "done-fit.json").is_file():
            raise FileNotFoundError(f"{run_dir} has not finished: run `lightning-fcae stand-ins train` first")
    for part in ("clip", "ldm", "classifier", "checks.json", "manifest.json"):  # only what this writes
        target = out / part
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()

    import yaml

    clip_config = yaml.safe_load((run_dirs["clip_pretrain"] / "run.yaml").read_text())
    clip_model = clip_config["model"]["init_args"]["architecture"]
    clip_dir = out / "clip"
    clip_dir.mkdir(parents=True)
    state = torch.load(shared / "clip.pt", map_location="cpu", weights_only=True)
    save_file(half_state_dict(state), clip_dir / f"{clip_model}.safetensors")
    shutil.copy(run_dirs["clip_pretrain"] / "run.yaml", clip_dir / "run.yaml")

    ldm = load_ldm(shared / "ldm")
    for module in (ldm.vq, ldm.unet, ldm.condition):
        _half(module)
    save_ldm(ldm, out / "ldm")
    shutil.copy(run_dirs["ldm_vq"] / "run.yaml", out / "ldm" / "vqvae" / "run.yaml")
    shutil.copy(run_dirs["ldm_unet"] / "run.yaml", out / "ldm" / "unet" / "run.yaml")

    classifier = SceneClassifier.from_pretrained(shared / "classifier_export")
    _half(classifier).save_pretrained(out / "classifier")
    shutil.copy(run_dirs["classifier"] / "run.yaml", out / "classifier" / "run.yaml")

    dataset = dataset_identity(Manifest.load(data_dir))
    stand_ins = StandIns(
        out, clip_model, clip_dir / f"{clip_model}.safetensors", out / "ldm", out / "classifier", dataset
    )
    figures = run_checks(stand_ins, data_dir)
    (out / "checks.json").write_text(json.dumps(figures, indent=2) + "\n")
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
        out / "ldm" / "vqvae",
        "LDM stand-in: VQ-f4 autoencoder",
        "The LDM's VQ autoencoder (`LDMPretrain`, part `vq`): 32 px images -> 8x8x3 latents.",
        [Training("ldm_vq", run_dirs["ldm_vq"])],
        {"ldm_vq": out / "ldm" / "vqvae" / "run.yaml"},
        weights(out / "ldm" / "vqvae"),
        **common,
    )
    write_card(
        out / "ldm" / "unet",
        "LDM stand-in: conditional UNet (+ condition encoder `ldm/condition`)",
        "The UNet stage 3 fine-tunes (`LDMPretrain`, part `unet`), conditioned through cross-attention and "
        "the time embedding on the CLIP stand-in's image tokens and caption embedding (`ClipCondition`).",
        [Training("ldm_unet", run_dirs["ldm_unet"])],
        {"ldm_unet": out / "ldm" / "unet" / "run.yaml"},
        weights(out / "ldm" / "unet") + weights(out / "ldm" / "condition"),
        **common,
    )
    write_card(
        out / "classifier",
        "Scene classifier (the judge of the checks)",
        "Names the shape and colour of a scene's largest object (`ClassifierPretrain`); only the checks "
        "use it.",
        [Training("classifier", run_dirs["classifier"])],
        {"classifier": out / "classifier" / "run.yaml"},
        weights(out / "classifier"),
        **common,
    )
    write_manifest(out, clip_model, dataset)
    return load_stand_ins(out, data_dir)
