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
from .figure import grid_rows, side_by_side, write_side_by_side_png
from .runs import load_summaries
from .tables import DASH, Table, chance_level, data_note, render, table_parts

# where torchvision looks for the perceptual metrics' checkpoints, named in their skip reasons
MISSING_CHECKPOINT = re.compile(r"needs the checkpoint (\S+) at (\S+) ")


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
    """One seed's metrics: every block (raw, pairwise, perceptual), mean over subjects and per subject,
    each identification metric beside its chance level."""
    subjects = list(recon.get("meta", {}).get("subjects", {}))
    table = Table(
        "metrics (mean over subjects, then per subject)", ["block", "metric", "chance", "mean", *subjects]
    )
    for block, scores in recon.items():
        if block == "meta" or not isinstance(scores, dict):
            continue
        for name, mean in scores.get("mean", {}).items():
            per = [scores.get("per_subject", {}).get(s, {}).get(name) for s in subjects]
            chance = chance_level(name, block)
            table.rows.append(
                [block, name, "" if chance is None else f"{chance:.2f}", f"{mean:.4f}"]
                + [DASH if v is None else f"{v:.4f}" for v in per]
            )
    table.notes = _skipped_notes(recon)
    return table


def _skipped_notes(recon: dict) -> list[str]:
    """Why metrics were skipped, short: the metrics that only lack a pretrained checkpoint (every one of
    MindEye's and LPIPS' networks, on a machine without them) share one note naming the files to copy
    and where; any other reason is said as it is."""
    notes, names, files, folders = [], [], [], set()
    for block, scores in recon.items():
        for name, why in (scores.get("skipped", {}) if isinstance(scores, dict) else {}).items():
            if match := MISSING_CHECKPOINT.search(why):
                names.append(name)
                files.append(match.group(1))
                folders.add(str(Path(match.group(2)).parent))
            else:
                notes.append(f"{block} {name} skipped: {why}")
    if names:
        notes.insert(
            0,
            f"skipped {', '.join(names)}: no pretrained checkpoint on disk; copy "
            f"{', '.join(dict.fromkeys(files))} into {', '.join(sorted(folders))} (TORCH_HOME) to score them "
            "(README: Models and weights offline).",
        )
    return notes


def _tile(run_dir: Path, path: Path, alt: str, caption: str = "") -> str:
    """One image cell, enlarged without smoothing (CSS), with an optional caption under it."""
    under = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f"<td><figure><img class='tile' src='{_link(run_dir, path)}' alt='{_e(alt)}'>{under}</figure></td>"


def _target(run_dir: Path, recon_dir: Path, row: dict) -> str:
    """The seen image's cell, captioned with its sample key and first caption."""
    caption = f"{row['key']}: {row.get('caption', '')}"
    return _tile(run_dir, recon_dir / "truth" / f"{row['key']}.png", f"target {row['key']}", caption)


def _grid_html(run_dir: Path, recon_dir: Path) -> str:
    """A seed's reconstructions, one labelled table per subject: the target (with its caption), then
    each sample; grid.png alone (no labels to give) is shown enlarged with a caption saying its layout."""
    found = grid_rows(recon_dir)
    if found is None:
        grid = recon_dir / "grid.png"
        if not grid.is_file():
            return ""
        return (
            f"<figure><img class='grid' src='{_link(run_dir, grid)}' alt='targets and reconstructions'>"
            "<figcaption>each test image, then its reconstruction(s) to its right (first test trials, "
            "enlarged without smoothing)</figcaption></figure>"
        )
    rows, samples = found
    head = "<tr><th>target</th>" + "".join(f"<th>sample {i + 1}</th>" for i in range(samples)) + "</tr>"
    out = []
    for subject in dict.fromkeys(r["subject"] for r in rows):
        body = ""
        for row in (r for r in rows if r["subject"] == subject):
            images = recon_dir / "images"
            tiles = [
                _tile(run_dir, images / f"{row['key']}_{i}.png", f"sample {i + 1}") for i in range(samples)
            ]
            body += "<tr>" + _target(run_dir, recon_dir, row) + "".join(tiles) + "</tr>"
        out.append(
            f"<div><h4>reconstructions, {_e(subject)}</h4><table class='grid'>{head}{body}</table></div>"
        )
    return "<div class='grids'>" + "\n".join(out) + "</div>"  # subjects side by side where they fit


def _side_by_side_html(run_dir: Path, summaries: list[dict]) -> str:
    """Each method's first sample on the same test images, side by side (the lowest seed of each method
    that wrote a labelled grid): how the methods differ, seen rather than scored. The same comparison
    is written as ``side_by_side.png`` (its first rows), linked under the table."""
    found = side_by_side(summaries)
    if found is None:
        return ""
    firsts, rows = found
    reference = next(iter(firsts.values()))
    head = "<tr><th>target</th>" + "".join(
        f"<th>{_e(s.get('label', m))}, seed {_e(s['seed'])}</th>" for m, s in firsts.items()
    )
    body = ""
    for row in rows:
        body += "<tr>" + _target(run_dir, reference["dir"] / "recon", row)
        for method, summary in firsts.items():
            image = summary["dir"] / "recon" / "images" / f"{row['key']}_0.png"
            body += _tile(run_dir, image, f"{summary.get('label', method)} {row['key']}")
        body += "</tr>"
    png = write_side_by_side_png(summaries, run_dir / "side_by_side.png")
    link = f"<p><a href='{_link(run_dir, png)}'>side_by_side.png</a> (the first rows, as one figure)</p>"
    return (
        "<h2>Reconstructions side by side (sample 1 of each method, same test images)</h2>"
        f"<table class='grid'>{head}</tr>{body}</table>{link}"
    )


def _curves_html(run_dir: Path, stage_root: Path, prefix: str, name: str) -> str:
    """Loss-curve images of every stage below ``stage_root``, written to ``run_dir/plots`` and titled
    ``name: stage``, each linked to its stage's config.yaml when there is one."""
    parts = []
    for stage in sorted(p for p in stage_root.iterdir() if p.is_dir()):
        png = run_dir / "plots" / f"{prefix}_{stage.name}.png"
        if not plot_curves(stage, png, title=f"{name}: {stage.name} loss"):
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
    out.append(_grid_html(run_dir, seed_dir / "recon"))
    if summary.get("recon"):
        out.append(_html_table(_metric_table(summary["recon"]), "h4"))
    if summary.get("identification"):
        ident = ", ".join(f"{k} {v:.4f} (chance {_chance(k)})" for k, v in summary["identification"].items())
        what = "ridge voxels -> CLIP tokens" if summary["method"] == "ridge" else "stage-2 fMRI embedding"
        out.append(f"<p>identification among CLIP image embeddings, {what} (test): {_e(ident)}</p>")
    if summary.get("init") == "lowlevel":
        choice = seed_dir / "strength" / "choice.json"
        link = f" (<a href='{_link(run_dir, choice)}'>val scores</a>)" if choice.is_file() else ""
        out.append(
            f"<p>reconstructions start img2img from the ridge's low-level image at strength "
            f"{_e(summary.get('strength'))}, chosen on val{link}</p>"
        )
    if summary.get("seconds"):
        times = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
        out.append(f"<p>time: {_e(times)}</p>")
    name = f"{summary.get('label', summary['method'])}, seed {summary['seed']}"
    out.append(_curves_html(run_dir, seed_dir, prefix, name))
    return "\n".join(out)


def _chance(key: str) -> str:
    """Chance level of an identification key, as the page prints it."""
    chance = chance_level(key)
    return "?" if chance is None else f"{chance:.2f}"


STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 2px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.note { color: #555; font-size: small; margin: 0.2em 0; }
.curves, .grids { display: flex; flex-wrap: wrap; gap: 8px 24px; }
img.grid { width: 100%; max-width: 1100px; image-rendering: pixelated; }
img.tile { width: 160px; height: 160px; image-rendering: pixelated; display: block; }
table.grid td, table.grid th { border: none; padding: 2px; text-align: center; vertical-align: top; }
table.grid figcaption { max-width: 160px; font-size: small; text-align: left; }
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
    body = [f"<h1>fMRI reconstruction report: {_e(run)}</h1>", _meta_html(run_dir, summaries)]
    for name, parts in table_parts(summaries).items():
        markdown, text = render(parts)
        (run_dir / f"{name}.md").write_text(markdown, encoding="utf-8")
        (run_dir / f"{name}.csv").write_text(text, encoding="utf-8")
        body += [_html_table(table) for table in parts[0]]
        body.append(f"<p><a href='{name}.md'>{name}.md</a> · <a href='{name}.csv'>{name}.csv</a></p>")
    body.append(_side_by_side_html(run_dir, summaries))
    body.append("<h2>Runs</h2>")
    body += [_seed_html(run_dir, s) for s in summaries]
    if (run_dir / "shared").is_dir():
        shared = _curves_html(run_dir, run_dir / "shared", "shared", "shared stand-in")
        body += ["<h2>Shared stand-ins</h2>", shared]
    page = (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{_e(run)}</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    report = run_dir / "report.html"
    report.write_text(page, encoding="utf-8")
    return report
