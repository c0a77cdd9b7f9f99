"""Loss curves of one stage, read from the CSVLogger ``metrics.csv`` the pipeline adds to every stage."""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot state, no display


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


def plot_curves(stage_dir: str | Path, out_png: str | Path) -> bool:
    """Plot one stage's loss curves (train/* and val/* against step) into ``out_png``; log y when every
    value is positive, since losses fall over orders of magnitude. False, and no file, when the stage
    has no metrics.csv with a training loss."""
    series = training_losses(Path(stage_dir))
    if not series:
        return False
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    axes = figure.add_subplot()
    for name, (steps, values) in sorted(series.items()):
        is_val = name.startswith("val")
        axes.plot(steps, values, marker="o" if is_val else None, markersize=3, label=name)
    if all(v > 0 for _, values in series.values() for v in values):
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(Path(stage_dir).name)
    axes.legend(fontsize="small")
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=100)
    return True
