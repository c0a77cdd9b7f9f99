"""The paper's experiments as one command: every stage in order, each feeding the next, then evaluation.

``lightning-fcae pipeline --plan PLAN --out DIR`` runs a plan (:mod:`lightning_fcae.runs.pipeline`) and
writes its report; ``--check`` makes only its preflight (:mod:`lightning_fcae.runs.preflight`)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ..runs.methods import METHODS
from ..runs.pipeline import Pipeline
from ..runs.plan import PlanError, load_yaml


def seed_value(text: str) -> int:
    """A ``--seeds`` entry: numpy and Lightning take seeds in [0, 2**32)."""
    seed = int(text)
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"seeds must be in [0, 2**32), got {seed}")
    return seed


def interrupted(pipeline: Pipeline | None, argv: list[str]) -> str:
    """The one line a Ctrl-C prints: what was saved and the command that resumes."""
    command = shlex.join(["lightning-fcae", "pipeline", *argv])
    if pipeline is None or pipeline.running is None:
        return f"interrupted: finished stages are kept; rerun `{command}` to go on"
    return (
        f"interrupted during {pipeline.running}: the stages before it are kept, it resumes from what it "
        f"last saved (a fit: its last epoch's checkpoint); rerun `{command}` to go on"
    )


def check(pipeline: Pipeline, methods: list[str], seeds: list[int]) -> int:
    """``pipeline --check``: the preflight's problems, one a line (exit 2), or what it verified (exit 0)."""
    from ..runs.preflight import preflight

    started = time.monotonic()
    findings = preflight(pipeline, methods, seeds)
    if findings.problems:
        print("\n".join(f"problem: {line}" for line in findings.problems), file=sys.stderr)
        print(f"preflight: {len(findings.problems)} problem(s)", file=sys.stderr)
        return 2
    print("\n".join(f"ok: {line}" for line in findings.verified))
    print(f"preflight OK ({time.monotonic() - started:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``lightning-fcae pipeline --plan PLAN --out DIR [--methods ...] [--seeds ...]``."""
    parser = argparse.ArgumentParser(prog="lightning-fcae pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, required=True, help="experiments/demo.yaml or paper.yaml")
    parser.add_argument("--out", type=Path, required=True, help="run folder (a rerun resumes)")
    parser.add_argument("--methods", nargs="+", default=["fcae"], help=f"of {', '.join(METHODS)}")
    parser.add_argument("--seeds", nargs="+", type=seed_value, default=[0])
    parser.add_argument("--data", default=None, help="dataset directory (default: the plan's data_dir)")
    parser.add_argument("--configs", type=Path, default=Path("configs"), help="the stage configs' folder")
    parser.add_argument("--dry-run", action="store_true", help="write the configs, print the commands")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only the preflight (every real run makes it first): data, weights, shapes, devices, disk; "
        "one line per problem, exit 2 if any",
    )
    parser.add_argument(
        "--train-stand-ins",
        action="store_true",
        help="train the CLIP and LDM stand-ins into OUT/shared instead of using the plan's shipped stand_ins",
    )
    parser.add_argument("--no-report", dest="report", action="store_false")
    args = parser.parse_args(argv)
    pipeline = None
    try:
        plan = load_yaml(args.plan)
        if args.data:
            plan["data_dir"] = args.data
        if "data_dir" not in plan:
            raise PlanError(f"{args.plan}: no data_dir (or pass --data)")
        pipeline = Pipeline(plan, args.out, args.configs, args.dry_run, args.train_stand_ins)
        if args.check:
            return check(pipeline, args.methods, args.seeds)
        pipeline(args.methods, args.seeds)
    except (PlanError, RuntimeError, FileNotFoundError) as exc:  # StandInError is a FileNotFoundError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what is kept and how to go on, not a traceback
        print(interrupted(pipeline, sys.argv[1:] if argv is None else argv), file=sys.stderr)
        return 130
    if args.report and not args.dry_run:
        from ..report import write_report

        print(f"wrote {write_report(args.out)}")
    return 0
