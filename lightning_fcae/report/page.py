"""``RUN_DIR/report.html``: the tables, each seed's reconstructions, metrics and loss curves on one page.

Images are linked by relative path and there is no external CSS or JS, so the folder can be copied or
zipped as it is.
"""

from __future__ import annotations

import html
import re
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from .curves import plot_curves
from .runs import load_summaries
from .tables import DASH, Table, data_note, render, table_parts


def _e(text: object) -> str:
    """Escape for HTML text and attributes: labels and paths come from the run's files."""
    return html.escape(str(text), quote=True)


def _link(run_dir: Path, path: Path) -> str:
    """A relative URL from report.html (in ``run_dir``) to ``path``."""
    return quote(path.relative_to(run_dir).as_posix())


def _html_table(table: Table, title_tag: str = "h2") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    notes = "".join(f"<p class='note'>{_e(n)}</p>" for n in table.notes)
    return f"<{title_tag}>{_e(table.title)}</{title_tag}><table><tr>{head}</tr>{body}</table>{notes}"


def _metric_table(recon: dict) -> Table:
    """One seed's metrics: every block (raw, pairwise, perceptual), mean over subjects and per subject."""
    subjects = list(recon.get("meta", {}).get("subjects", {}))
    table = Table("metrics (mean over subjects, then per subject)", ["block", "metric", "mean", *subjects])
    for block, scores in recon.items():
        if block == "meta" or not isinstance(scores, dict):
            continue
        for name, mean in scores.get("mean", {}).items():
            per = [scores.get("per_subject", {}).get(s, {}).get(name) for s in subjects]
            table.rows.append([block, name, f"{mean:.4f}", *(DASH if v is None else f"{v:.4f}" for v in per)])
        table.notes += [f"{block} skipped {name}: {why}" for name, why in scores.get("skipped", {}).items()]
    return table


def _curves_html(run_dir: Path, stage_root: Path, prefix: str) -> str:
    """Loss-curve images of every stage below ``stage_root``, written to ``run_dir/plots``, each linked
    to its stage's config.yaml when there is one."""
    parts = []
    for stage in sorted(p for p in stage_root.iterdir() if p.is_dir()):
        png = run_dir / "plots" / f"{prefix}_{stage.name}.png"
        if not plot_curves(stage, png):
            continue
        config = stage / "config.yaml"
        caption = _e(stage.name)
        if config.is_file():
            caption += f" (<a href='{_link(run_dir, config)}'>config.yaml</a>)"
        parts.append(
            f"<figure><img src='{_link(run_dir, png)}' alt='{_e(stage.name)} loss'>"
            f"<figcaption>{caption}</figcaption></figure>"
        )
    return "<div class='curves'>" + "".join(parts) + "</div>" if parts else "<p>no loss curves</p>"


def _seed_html(run_dir: Path, summary: dict) -> str:
    """One method/seed: reconstruction grid, its metrics, identification, stage times and loss curves."""
    seed_dir: Path = summary["dir"]
    prefix = f"{summary['method']}_seed{summary['seed']}"
    out = [
        f"<h3 id='{_e(prefix)}'>{_e(summary.get('label', summary['method']))}, seed {_e(summary['seed'])}</h3>"
    ]
    links = [f"<a href='{_link(run_dir, seed_dir / 'summary.json')}'>summary.json</a>"]
    if (seed_dir / "recon" / "metrics.json").is_file():
        links.append(f"<a href='{_link(run_dir, seed_dir / 'recon' / 'metrics.json')}'>metrics.json</a>")
    out.append("<p>" + " · ".join(links) + "</p>")
    grid = seed_dir / "recon" / "grid.png"
    if grid.is_file():
        out.append(
            f"<figure><img class='grid' src='{_link(run_dir, grid)}' alt='truth | reconstructions'>"
            "<figcaption>each test image, then its reconstruction(s) to its right (first test trials, "
            "enlarged without smoothing)</figcaption></figure>"
        )
    if summary.get("recon"):
        out.append(_html_table(_metric_table(summary["recon"]), "h4"))
    if summary.get("identification"):
        ident = ", ".join(f"{k} {v:.4f} (chance {_chance(k)})" for k, v in summary["identification"].items())
        what = "ridge voxels -> CLIP embedding" if summary["method"] == "ridge" else "stage-2 fMRI embedding"
        out.append(f"<p>identification among CLIP image embeddings, {what} (test): {_e(ident)}</p>")
    if summary.get("seconds"):
        times = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
        out.append(f"<p>time: {_e(times)}</p>")
    out.append(_curves_html(run_dir, seed_dir, prefix))
    return "\n".join(out)


def _chance(key: str) -> str:
    """Chance level of an identification key: ``top1_<n>way`` or per subject ``top1_<n>way_<subject>``."""
    match = re.match(r"top1_(\d+)way(?:_|$)", key)
    return f"{1 / int(match.group(1)):.2f}" if match else "?"


STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 2px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.note { color: #555; font-size: small; margin: 0.2em 0; }
.curves { display: flex; flex-wrap: wrap; gap: 8px; }
img.grid { width: 100%; max-width: 1100px; image-rendering: pixelated; }
figure { margin: 0; }
"""


def _meta_html(run_dir: Path, summaries: list[dict]) -> str:
    """Run name, where the data came from, when, which seeds and methods."""
    seeds = sorted({s["seed"] for s in summaries})
    methods = list(dict.fromkeys(s["method"] for s in summaries))
    finished = max((s["dir"] / "summary.json").stat().st_mtime for s in summaries)
    items = [
        ("run dir", run_dir.resolve()),
        ("data", data_note(summaries)),
        ("last summary written", datetime.fromtimestamp(finished).isoformat(timespec="seconds")),
        ("report written", datetime.now().isoformat(timespec="seconds")),
        ("seeds", ", ".join(map(str, seeds))),
        ("methods", ", ".join(methods)),
    ]
    return "<ul>" + "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in items) + "</ul>"


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html``, ``plots/``, ``table2.{md,csv}`` and (when some method belongs in Table 3)
    ``table3.{md,csv}`` into ``run_dir``; return the report's path."""
    run_dir = Path(run_dir)
    summaries = load_summaries(run_dir)
    run = summaries[0].get("run", run_dir.name)
    body = [f"<h1>lightning-fcae run {_e(run)}</h1>", _meta_html(run_dir, summaries)]
    for name, parts in table_parts(summaries).items():
        markdown, text = render(parts)
        (run_dir / f"{name}.md").write_text(markdown, encoding="utf-8")
        (run_dir / f"{name}.csv").write_text(text, encoding="utf-8")
        body += [_html_table(table) for table in parts[0]]
        body.append(f"<p><a href='{name}.md'>{name}.md</a> · <a href='{name}.csv'>{name}.csv</a></p>")
    body.append("<h2>Runs</h2>")
    body += [_seed_html(run_dir, s) for s in summaries]
    if (run_dir / "shared").is_dir():
        body += ["<h2>Shared stand-ins</h2>", _curves_html(run_dir, run_dir / "shared", "shared")]
    page = (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{_e(run)}</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    report = run_dir / "report.html"
    report.write_text(page, encoding="utf-8")
    return report
