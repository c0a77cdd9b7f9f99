"""The preflight's checks of the weights a run loads and of the shapes its stages must agree on: CLIP's
token grid ``T x D`` with every ``clip_tokens`` / ``clip_dim``, the LDM's image size with stage 3's, a
model's ``image_size`` with its data's."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from .preflight_findings import Findings, init_args, model_arg

if TYPE_CHECKING:
    from ..data.schema import Manifest
    from .tasks import Run


@dataclasses.dataclass(frozen=True)
class ClipGrid:
    """CLIP's image tokens ``T x D`` and where they come from (for messages)."""

    tokens: int
    dim: int
    source: str


@dataclasses.dataclass(frozen=True)
class LdmShape:
    """What stage 3 must agree with: the LDM's native image side and, for an LDM pretrained on CLIP
    features, its condition's token grid."""

    image_size: int
    grid: tuple[int, int] | None
    source: str
    parameters: int
    finetuned: int  # what stage 3 trains in the UNet (cross-attention; + the new time-embedding input)


def clip_grid_of_architecture(name: str) -> ClipGrid:
    """The token grid of an open_clip architecture from its config, without building it."""
    from ..models.clip import clip_token_grid

    return ClipGrid(*clip_token_grid(name), f"{name} (trained by this run)")


def load_clip_grid(findings: Findings, model: str, weights: str) -> ClipGrid | None:
    """Load the CLIP the stages will load (open_clip) and return its token grid. When it does not load,
    the problem is recorded and the grid comes from the architecture's config, so that the shape
    checks still run: a missing file and a clip_tokens mismatch are both named in one pass."""
    from ..models.clip import load_clip

    with findings.check(f"CLIP {model} / {weights}"):
        clip = load_clip(model, weights)
        grid = ClipGrid(clip.num_tokens, clip.embed_dim, f"{model} / {weights}")
        findings.verified.append(f"CLIP {grid.source}: loads, {grid.tokens} x {grid.dim} image tokens")
        return grid
    try:
        return dataclasses.replace(clip_grid_of_architecture(model), source=model)
    except ValueError:  # an unknown architecture: load_clip said so already
        return None


def ldm_shape(ldm, source: str) -> LdmShape:
    """Native side = the UNet's latent side x the VQ's downsampling; grid of its condition, if any."""
    from ..models.ldm import cross_attention_parameters, vq_downsampling

    grid = None
    if ldm.condition is not None:
        grid = (ldm.condition.config.clip_tokens, ldm.condition.config.clip_dim)
    size = ldm.unet.config.sample_size * vq_downsampling(ldm.vq)
    parameters = sum(p.numel() for part in (ldm.unet, ldm.vq) for p in part.parameters())
    finetuned = sum(p.numel() for p in cross_attention_parameters(ldm.unet).values())
    return LdmShape(size, grid, source, parameters, finetuned)


def load_ldm_shape(findings: Findings, path: str) -> LdmShape | None:
    """Load the LDM folder stage 3 will load (diffusers); its shape, or None after a problem."""
    from ..models.ldm import load_ldm

    with findings.check(f"LDM {path}"):
        shape = ldm_shape(load_ldm(path), path)
        findings.verified.append(f"LDM {path}: loads, {shape.image_size} px")
        return shape
    return None


def planned_ldm_shape(unet_config: dict) -> LdmShape:
    """The shape of the stand-in LDM this run trains (``ldm_unet``), built on the meta device (no memory).
    It has no condition yet (grid None): ``ldm_unet``'s ``clip_tokens`` x ``clip_dim`` are checked against
    CLIP with the other stages' in :func:`check_shapes`."""
    from ..models.ldm import build_ldm

    name = model_arg(unet_config, "ldm_config")
    with torch.device("meta"):
        ldm = build_ldm(name)
    return ldm_shape(ldm, f"ldm_config {name} (trained by this run)")


def check_weights(
    findings: Findings, run: Run, configs: dict[str, dict], data_ok: bool
) -> tuple[ClipGrid | None, LdmShape | None]:
    """Load what the plan names (shipped stand-ins, a CLIP file or tag, an LDM folder); for what the
    run trains itself, the shapes its configs give. Returns CLIP's grid and the LDM's shape (None where
    a problem was found, or where a stage config did not load: that was reported already)."""
    plan = run.plan
    if run.use_shipped:
        from ..stand_ins.shipped import load_stand_ins

        root = plan["stand_ins"]
        with findings.check(f"stand-ins {root}"):
            stand_ins = load_stand_ins(root, run.data_dir if data_ok else None)
            findings.verified.append(f"stand-ins {root}: every file matches its sha256")
            return (
                load_clip_grid(findings, stand_ins.clip_model, str(stand_ins.clip_weights)),
                load_ldm_shape(findings, str(stand_ins.ldm)),
            )
        return None, None
    clip = ldm = None
    if plan.get("clip_pretrained"):
        clip = load_clip_grid(findings, plan["clip_model"], str(plan["clip_pretrained"]))
    elif "clip_pretrain" in configs:
        with findings.check("stages.clip_pretrain"):
            clip = clip_grid_of_architecture(model_arg(configs["clip_pretrain"], "architecture"))
            findings.verified.append(f"CLIP {clip.source}: {clip.tokens} x {clip.dim} image tokens")
    if plan.get("pretrained_ldm"):
        ldm = load_ldm_shape(findings, str(plan["pretrained_ldm"]))
    elif "ldm_unet" in configs:
        with findings.check("stages.ldm_unet"):
            ldm = planned_ldm_shape(configs["ldm_unet"])
            findings.verified.append(f"LDM {ldm.source}: {ldm.image_size} px")
    return clip, ldm


def image_size(config: dict, manifest: Manifest | None) -> int | None:
    """The side a stage trains at: the model's resize, else the data's, else the dataset's own."""
    size = init_args(config).get("image_size") or init_args(config, "data").get("image_size")
    return size or (manifest.image_size if manifest else None)


def check_shapes(
    findings: Findings,
    configs: dict[tuple[str, str], dict],
    by_stage: dict[str, dict],
    clip: ClipGrid | None,
    ldm: LdmShape | None,
    manifest: Manifest | None,
) -> None:
    """clip_tokens / clip_dim against CLIP, image sizes against the LDM and between model and data."""
    for (stage, _), config in configs.items():
        model, data = init_args(config).get("image_size"), init_args(config, "data").get("image_size")
        if model and data and model != data:
            findings.problems.append(
                f"stages.{stage}: model image_size {model} and data image_size {data} differ (Lightning "
                "refuses hyper-parameters that disagree between model and data): set both alike"
            )
    if clip is not None:
        for stage in ("stage2", "stage1_image", "ldm_unet"):  # the stages that read CLIP's tokens
            if stage not in by_stage:
                continue
            grid = (model_arg(by_stage[stage], "clip_tokens"), model_arg(by_stage[stage], "clip_dim"))
            # unset values follow from the CLIP the pipeline hands the stage; set ones must agree with it
            if any(v is not None and v != c for v, c in zip(grid, (clip.tokens, clip.dim), strict=True)):
                findings.problems.append(
                    f"stages.{stage}: clip_tokens x clip_dim is {grid[0] or clip.tokens} x {grid[1] or clip.dim}, "
                    f"the CLIP {clip.source} gives {clip.tokens} x {clip.dim}: remove "
                    f"stages.{stage}.model.init_args.clip_tokens / clip_dim (they follow from the CLIP)"
                )
        if (
            ldm is not None
            and ldm.grid is not None
            and "stage2" in by_stage
            and ldm.grid != (clip.tokens, clip.dim)
        ):
            findings.problems.append(
                f"LDM {ldm.source} was pretrained on {ldm.grid[0]} x {ldm.grid[1]} CLIP tokens, the CLIP "
                f"{clip.source} gives {clip.tokens} x {clip.dim}: stage 3 refuses a stage-2 encoder aligned "
                "to another CLIP; use the CLIP the LDM was pretrained with"
            )
    if ldm is not None:
        for stage in ("ldm_vq", "ldm_unet", "stage3"):
            size = image_size(by_stage[stage], manifest) if stage in by_stage else None
            if size and size != ldm.image_size:
                findings.problems.append(
                    f"stages.{stage}: images at {size} px, the LDM {ldm.source} works at {ldm.image_size} px "
                    f"(its UNet's latent side x the VQ's downsampling): set stages.{stage} model and data "
                    f"image_size: {ldm.image_size}"
                )
