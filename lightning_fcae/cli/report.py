"""``lightning-fcae report RUN_DIR``: one HTML page, and the paper's Tables 2 and 3, from a pipeline run.

What it writes, and how: :mod:`lightning_fcae.report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """``lightning-fcae report RUN_DIR``."""
    parser = argparse.ArgumentParser(prog="lightning-fcae report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="results/<run> folder written by the pipeline driver")
    args = parser.parse_args(argv)
    from ..report import load_summaries, write_report
    from ..report.tables import table_parts

    try:
        report = write_report(args.run_dir)
        tables = table_parts(load_summaries(args.run_dir))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in tables:
        print(f"wrote {args.run_dir / name}.md, {args.run_dir / name}.csv")
    if (args.run_dir / "plots").is_dir():
        print(f"wrote loss curves to {args.run_dir / 'plots'}")
    print(f"wrote {report}")
    return 0
