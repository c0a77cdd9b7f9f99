"""``lightning-fcae stand-ins train | check | verify``: the synthetic benchmark's shipped stand-ins
(:mod:`lightning_fcae.stand_ins`), trained by the pipeline's own stages (:mod:`lightning_fcae.runs`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-fcae stand-ins",
        description="Train, check and verify the synthetic benchmark's stand-in CLIP and LDM.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train", help="train the stand-ins and write the shipped folder (make stand-ins)"
    )
    train.add_argument("--plan", type=Path, default=Path("experiments/demo.yaml"), help="budgets (stages:)")
    train.add_argument("--data", default=None, help="dataset (default: the plan's data_dir)")
    train.add_argument("--runs", type=Path, default=Path("results/stand-ins"), help="training run folder")
    train.add_argument("--out", type=Path, default=Path("stand-ins/synthetic-small"), help="shipped folder")
    train.add_argument("--configs", type=Path, default=Path("configs"), help="the stage configs' folder")
    check = commands.add_parser("check", help="print the checks' figures for a stand-ins folder")
    check.add_argument("folder", type=Path, nargs="?", default=Path("stand-ins/synthetic-small"))
    check.add_argument("--data", default="data/synthetic-small", help="the dataset whose test split to use")
    check.add_argument("--steps", type=int, default=25, help="DDIM steps of the samples (default: 25)")
    check.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance (default: 3)")
    verify = commands.add_parser("verify", help="check every file against the manifest's sha256")
    verify.add_argument("folder", type=Path, nargs="?", default=Path("stand-ins/synthetic-small"))
    verify.add_argument("--data", default=None, help="also check they were trained on this dataset")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``lightning-fcae stand-ins train | check | verify``."""
    args = build_parser().parse_args(argv)
    from ..runs import plan as plans
    from ..stand_ins.shipped import StandInError, load_stand_ins

    try:
        if args.command == "verify":
            stand_ins = load_stand_ins(args.folder, args.data)
            print(
                f"{stand_ins.root}: every file matches its sha256 ({stand_ins.clip_model}, {stand_ins.ldm})"
            )
        elif args.command == "check":
            from ..stand_ins.checks import format_checks, run_checks

            stand_ins = load_stand_ins(args.folder, args.data)
            print(format_checks(run_checks(stand_ins, args.data, steps=args.steps, guidance=args.guidance)))
        else:
            from ..runs.pipeline import Pipeline
            from ..stand_ins.build import COMMAND, ship

            plan = plans.load_yaml(args.plan)
            data = args.data or plan.get("data_dir")
            if not data:
                raise plans.PlanError(f"{args.plan}: no data_dir (or pass --data)")
            plan |= {"data_dir": data, "stand_ins": None, "clip_pretrained": None, "pretrained_ldm": None}
            Pipeline(plan, args.runs, args.configs).train_stand_ins()
            command = COMMAND.format(plan=args.plan, data=data, runs=args.runs, out=args.out)
            stand_ins = ship(args.runs, args.out, data, command)
            print(f"wrote {stand_ins.root} (cards: */CARD.md, figures: checks.json)")
    except (StandInError, plans.PlanError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
