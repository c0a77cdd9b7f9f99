"""Find a pipeline run's ``summary.json`` files: what every table and the page are built from."""

from __future__ import annotations

import json
import warnings
from pathlib import Path


def load_summaries(run_dir: str | Path) -> list[dict]:
    """Every ``*/seed*/summary.json`` of a run, sorted by method then seed, each with ``dir`` (its folder)
    added so the report can find the stages and the reconstruction beside it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run dir {run_dir} does not exist")
    summaries = []
    for path in run_dir.glob("*/seed*/summary.json"):
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(summary, dict):
            raise ValueError(f"{path} holds a {type(summary).__name__}, not a pipeline summary (a mapping)")
        # method and seed name plot files: they must be the folder's own, never a path from the file
        folder = {"method": path.parent.parent.name, "seed": path.parent.name.removeprefix("seed")}
        summary.setdefault("method", folder["method"])
        summary.setdefault("seed", int(folder["seed"]) if folder["seed"].isdigit() else folder["seed"])
        for key, value in folder.items():
            if str(summary[key]) != value:
                raise ValueError(
                    f"{path}: its {key} {summary[key]!r} is not its folder's ({value!r}); "
                    "summaries are written by `lightning-fcae pipeline`, do not edit them"
                )
        summaries.append(summary | {"dir": path.parent})
    unfinished = sorted(
        str(seed.relative_to(run_dir))
        for seed in run_dir.glob("*/seed*")
        if seed.is_dir() and not (seed / "summary.json").is_file()
    )
    if unfinished:  # running, interrupted, or a summary lost: the tables below lack these seeds
        message = f"{run_dir}: no summary.json in {', '.join(unfinished)}; left out of the report"
        warnings.warn(message, stacklevel=2)
    if not summaries:
        raise FileNotFoundError(
            f"no {run_dir}/<method>/seed<k>/summary.json: not a pipeline run folder, or no run finished yet"
        )
    # the ridge yardstick last: it is the row every method is read against
    return sorted(summaries, key=lambda s: (s["method"] == "ridge", s["method"], s["seed"]))
