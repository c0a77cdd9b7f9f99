"""Loss curves of one stage, read from the CSVLogger ``metrics.csv`` the pipeline adds to every stage."""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot state, no display
from matplotlib.ticker import MaxNLocator


def training_losses(stage_dir: Path) -> dict[str, tuple[list[float], list[float]]]:
    """The loss series of the newest metrics.csv below a stage that logged a training loss: a rerun logs
    into a new version, the newest being the run later stages used, and a ``lightning test`` beside the
    fit (the pipeline's ``csv/test``) logs no ``train/*`` curve."""
    for path in sorted(stage_dir.glob("**/metrics.csv"), key=lambda p: p.stat().st_mtime, reverse=True):
        series = _loss_series(path)
        if any(name.startswith("train") for name in series):
            return series
    return {}


def _history(path: Path) -> list[Path]:
    """``path`` after the parts a resumed run moved aside (``metrics.part1.csv``, ``part2``, ...)."""
    parts = sorted(
        path.parent.glob("metrics.part*.csv"), key=lambda p: int(p.stem.removeprefix("metrics.part"))
    )
    return [*parts, path]


def _loss_series(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """``{column: (steps, values)}`` of every column ending in 'loss', over the run's whole history (the
    parts before each resume first); CSVLogger rows are sparse (a row holds only the keys logged at that
    step), so empty cells are skipped."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for part in _history(path):
        with part.open(newline="") as handle:
            for row in csv.DictReader(handle):
                for name, value in row.items():
                    if name and name.endswith("loss") and value not in ("", None) and row.get("step"):
                        steps, values = series.setdefault(name, ([], []))
                        steps.append(float(row["step"]))
                        values.append(float(value))
    return series


def plot_curves(stage_dir: str | Path, out_png: str | Path, title: str | None = None) -> bool:
    """Plot one stage's loss curves into ``out_png``: training (``train/*``) and validation (``val/*``)
    side by side against the training step, on the same y range so the two read together; log y when
    every value is positive and they span a decade or more (losses can fall over orders of magnitude;
    a narrower range reads better on a linear axis). ``title`` names the run and
    stage (default: the stage folder's name). False, and no file, when the stage has no metrics.csv
    with a training loss."""
    series = training_losses(Path(stage_dir))
    if not series:
        return False
    panels = {"training": {}, "validation": {}}
    for name, curve in sorted(series.items()):
        panels["validation" if name.startswith("val") else "training"][name] = curve
    panels = {kind: curves for kind, curves in panels.items() if curves}
    figure = Figure(figsize=(4.5 * len(panels), 3.6), layout="constrained")
    values = [v for _, curve in series.values() for v in curve]
    log_y = min(values) > 0 and max(values) >= 10 * min(values)
    first = None
    for column, (kind, curves) in enumerate(panels.items(), start=1):
        axes = figure.add_subplot(1, len(panels), column, sharex=first, sharey=first)
        first = first or axes
        for name, (steps, values) in curves.items():
            axes.plot(steps, values, marker="o" if kind == "validation" else None, markersize=4, label=name)
        if log_y:
            axes.set_yscale("log")
        axes.set_title(kind, fontsize=11)
        axes.set_xlabel("training step", fontsize=10)
        axes.set_ylabel("loss" + (" (log scale)" if log_y else ""), fontsize=10)
        axes.tick_params(labelsize=9)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        axes.grid(True, which="major", alpha=0.3)
        axes.legend(fontsize=9)
    figure.suptitle(title or Path(stage_dir).name, fontsize=12)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=100)
    return True
