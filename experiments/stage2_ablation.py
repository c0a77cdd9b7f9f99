"""Stage 2's options one at a time and together, scored on val (never on test): the ablation behind the
choice of method ``ours`` (README, "Stage 2: what each option gives on val").

Every variant is ``lightning fit`` of one stage-2 config (the plan's, from the same stage-1 checkpoint and
seed) with a few init arguments changed, into ``OUT/stage2_ablation/seed<k>/<variant>`` (one folder per
seed, so that another seed in the same OUT trains anew); the table, also written to
``OUT/stage2_ablation_seed<k>.md``, gives each variant's best val identification over its epochs (the
step-0 model's included where the linear path knows it) beside the ridge yardstick's val figure, which is
the linear path's step 0::

    python experiments/stage2_ablation.py --plan experiments/demo.yaml --out results/ablation-demo --seed 0

A rerun skips the variants that finished (the pipeline's own bookkeeping); the stage-1 run is the
pipeline's, shared with a run of the same plan and seed in the same folder.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from lightning_fcae.runs.methods import METHODS
from lightning_fcae.runs.pipeline import Pipeline
from lightning_fcae.runs.plan import load_yaml
from lightning_fcae.runs.tasks import STAGE_CONFIGS, Task
from lightning_fcae.stand_ins.shipped import load_stand_ins

# variant -> stage-2 init arguments on top of the config (F+I+T unless the name says otherwise)
VARIANTS: dict[str, dict] = {
    "paper, plain token mean": {"embed_weight": None},
    "paper (embed_weight 0.5)": {},
    "+ mask_ratio 0": {"mask_ratio": 0.0},
    "+ image InfoNCE": {"image_contrastive": "infonce"},
    "+ image soft-CLIP": {"image_contrastive": "softclip"},
    "+ linear path (ridge)": {"linear_path": "ridge", "linear_lr": 1.0e-5},
    "+ linear path + image InfoNCE": {
        "linear_path": "ridge",
        "linear_lr": 1.0e-5,
        "image_contrastive": "infonce",
    },
    "+ linear path + mask_ratio 0": {"linear_path": "ridge", "linear_lr": 1.0e-5, "mask_ratio": 0.0},
    "F+I, plain token mean": {"use_text": False, "embed_weight": None},
    "F+I": {"use_text": False},
    "F+I, mask_ratio 0": {"use_text": False, "mask_ratio": 0.0},
    "F+T": {"use_image": False},
}


def best_val(stage_dir: Path, n_way: int) -> tuple[float, float, int] | None:
    """(best val n-way, val 2-way at that step, its step) from the stage's CSV log, or None."""
    rows = []
    for path in sorted((stage_dir / "csv" / "fit").glob("metrics*.csv")):
        with path.open() as handle:
            rows += [r for r in csv.DictReader(handle) if r.get(f"val/top1_{n_way}way")]
    if not rows:
        return None
    best = max(rows, key=lambda r: (float(r[f"val/top1_{n_way}way"]), -int(r["step"])))
    two = best.get("val/top1_2way") or "nan"
    return float(best[f"val/top1_{n_way}way"]), float(two), int(best["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME"
    )
    args = parser.parse_args()
    plan = load_yaml(args.plan)
    if args.data:
        plan["data_dir"] = args.data
    pipeline = Pipeline(plan, args.out, Path("configs"))
    if plan.get("stand_ins"):  # hash-checked, as the pipeline loads them
        pipeline.stand_ins = load_stand_ins(plan["stand_ins"], pipeline.data_dir)
    clip = pipeline.given_clip()
    method = METHODS["fcae"]
    stage1 = Task(
        "fit", pipeline.stage1_dir(method, args.seed), "stage1", method.stage1_config, "fcae", args.seed
    )
    encoder = pipeline.fit(stage1.stage, stage1.config_file, stage1.stage_dir, args.seed, {})
    n_way = int((plan.get("reconstruct") or {}).get("n_way", 50))
    rows = []
    for name in args.variants:
        folder = name.replace(" ", "_").replace(",", "").replace("+", "plus")
        stage_dir = args.out / "stage2_ablation" / f"seed{args.seed}" / folder  # one folder per seed
        init = {
            "encoder_ckpt": str(encoder),
            "clip_model": clip[0],
            "clip_pretrained": clip[1],
            **VARIANTS[name],
        }
        pipeline.fit("stage2", STAGE_CONFIGS["stage2"], stage_dir, args.seed, {"model": {"init_args": init}})
        rows.append((name, best_val(stage_dir, n_way)))
    lines = [
        f"| variant (stage 2, seed {args.seed}) | best val 2-way | best val {n_way}-way | at step |",
        "|---|---|---|---|",
    ]
    for name, found in rows:
        two, many, step = (math.nan, math.nan, -1) if found is None else (found[1], found[0], found[2])
        lines.append(f"| {name} | {two:.3f} | {100 * many:.1f}% | {step} |")
    table = "\n".join(lines)
    (args.out / f"stage2_ablation_seed{args.seed}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
