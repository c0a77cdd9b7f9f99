"""The methods a run compares (``lightning-fcae pipeline --methods``): which stage-1 pretraining each runs,
which stage-2 losses, how its reconstructions start. Each is a row of the paper's Table 2 and/or 3."""

from __future__ import annotations

from dataclasses import dataclass, field

from .plan import PlanError


@dataclass(frozen=True)
class Method:
    """A row of Table 2 and/or 3: which stage-1 pretraining, which stage-2 losses (None: no stage 2)."""

    label: str
    stage1_config: str  # file name under the configs folder
    encoder: str
    align: dict | None  # FCAEAlign init args (use_image / use_text, our options); None skips stage 2
    image_phase: str | None = None  # a second stage-1 run on cached CLIP image tokens (vis-dec)
    tables: tuple[str, ...] = ("table2", "table3")
    stage3: dict = field(default_factory=dict)  # LDMFinetune init args beyond the config (ours: lowlevel)
    init: str = "noise"  # reconstructions start from noise (the paper) or img2img from the low-level image


FULL = {"use_image": True, "use_text": True}
# Ours (beyond the paper; each option chosen on val, docs/method.md): stage 2 starts as the ridge yardstick
# (linear_path: ridge; best.ckpt keeps training only where it beats that start on val), stage 3 keeps the
# yardstick's voxels -> pixels map, and reconstructions start img2img from its image at a strength chosen
# on val.
OURS_ALIGN = {**FULL, "linear_path": "ridge", "linear_lr": 1.0e-5}
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)  # img2img strengths tried on val (1.0: from noise, as the paper)
# Table 3's top-1 is n-way identification of the reconstructions (its F rows have no stage 2, so a score
# on the reconstructions is the one every row has): every method runs stage 3. Table 3's full fCAE row
# is `fcae` and its MAE-F row is `mindvis`: the same chains, run once when both tables share a folder.
METHODS: dict[str, Method] = {
    "fcae": Method("fCAE, the paper's recipe (F+I+T)", "stage1_fcae.yaml", "fCAE", FULL),
    "ours": Method(
        "Ours: fCAE + ridge linear path + img2img (F+I+T)",
        "stage1_fcae.yaml",
        "fCAE",
        OURS_ALIGN,
        stage3={"lowlevel": "ridge"},
        init="lowlevel",
    ),
    "mindvis": Method("MinD-Vis (MAE), F", "stage1_mae.yaml", "MAE", None),
    "visdec": Method(
        "vis-dec (DC-MAE)", "stage1_dcmae.yaml", "DC-MAE", None, "stage1_dcmae_image.yaml", ("table2",)
    ),
    "fcae_F": Method("fCAE, F", "stage1_fcae.yaml", "fCAE", None, tables=("table3",)),
    "fcae_FI": Method(
        "fCAE, F+I", "stage1_fcae.yaml", "fCAE", {"use_image": True, "use_text": False}, tables=("table3",)
    ),
    "fcae_FT": Method(
        "fCAE, F+T", "stage1_fcae.yaml", "fCAE", {"use_image": False, "use_text": True}, tables=("table3",)
    ),
    "mae_FI": Method(
        "MAE, F+I", "stage1_mae.yaml", "MAE", {"use_image": True, "use_text": False}, tables=("table3",)
    ),
}


def chosen_methods(methods: list[str]) -> list[str]:
    """``methods`` once each, in order; an unknown one is a :class:`PlanError`."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise PlanError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def modalities(method: Method) -> str:
    if method.align is None:
        return "F"
    return "F" + "+I" * method.align["use_image"] + "+T" * method.align["use_text"]
