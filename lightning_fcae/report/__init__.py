"""``lightning-fcae report RUN_DIR``: one HTML page, and the paper's Tables 2 and 3, from a pipeline run.

The pipeline driver writes::

    RUN_DIR/shared/<stage>/             stand-ins trained once per run (clip_pretrain, ldm_vq, ldm_unet)
    RUN_DIR/<method>/seed<k>/<stage>/   LightningCLI roots (stage1..3), a CSVLogger metrics.csv below each
    RUN_DIR/<method>/seed<k>/recon/     ``lightning-fcae reconstruct`` output: metrics.json, grid.png
    RUN_DIR/<method>/seed<k>/summary.json

and this module writes ``RUN_DIR/report.html`` (images by relative path, no external CSS or JS, so the
folder can be copied or zipped as it is), ``RUN_DIR/plots/*.png`` (loss curves), ``table2.{md,csv}``,
when any run scored stage-2 identification ``table3.{md,csv}``, and with two methods or more
``side_by_side.png`` (test images beside each method's reconstruction).

Modules: :mod:`.runs` (finding the summaries), :mod:`.tables` (Tables 2 and 3), :mod:`.curves` (loss
plots), :mod:`.figure` (the methods side by side), :mod:`.page` (report.html).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .curves import plot_curves
from .page import write_report
from .runs import load_summaries
from .tables import table2, table3, table_parts

__all__ = ["load_summaries", "main", "plot_curves", "table2", "table3", "write_report"]


def main(argv: list[str] | None = None) -> int:
    """``lightning-fcae report RUN_DIR``."""
    parser = argparse.ArgumentParser(prog="lightning-fcae report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="results/<run> folder written by the pipeline driver")
    args = parser.parse_args(argv)
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
