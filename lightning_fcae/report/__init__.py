"""The report of a pipeline run: one HTML page, the paper's Tables 2 and 3, loss curves and the methods
side by side (``lightning-fcae report RUN_DIR``: :mod:`lightning_fcae.cli.report`).

The pipeline driver writes::

    RUN_DIR/shared/<stage>/             stand-ins trained once per run (clip_pretrain, ldm_vq, ldm_unet)
    RUN_DIR/<method>/seed<k>/<stage>/   LightningCLI roots (stage1..3), a CSVLogger metrics.csv below each
    RUN_DIR/<method>/seed<k>/recon/     ``lightning-fcae reconstruct`` output: metrics.json, grid.png
    RUN_DIR/<method>/seed<k>/summary.json

and this folder writes ``RUN_DIR/report.html`` (images by relative path, no external CSS or JS, so the
folder can be copied or zipped as it is), ``RUN_DIR/plots/*.png`` (loss curves), ``table2.{md,csv}``,
when any run scored stage-2 identification ``table3.{md,csv}``, and with two methods or more
``side_by_side.png`` (test images beside each method's reconstruction).

Modules: :mod:`.runs` (finding the summaries), :mod:`.tables` (Tables 2 and 3), :mod:`.curves` (loss
plots), :mod:`.figure` (the methods side by side), :mod:`.page` (report.html).

It reads a run folder's files, never its models: it may import ``files/`` only; the pipeline (``runs/``)
imports it to write the report at the end of a run.
"""

from __future__ import annotations

from .curves import plot_curves
from .page import write_report
from .runs import load_summaries
from .tables import table2, table3

__all__ = ["load_summaries", "plot_curves", "table2", "table3", "write_report"]
