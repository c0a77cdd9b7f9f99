"""``lightning-fcae report RUN_DIR``: one HTML page, and the paper's Tables 2 and 3, from a pipeline run.

The pipeline driver writes::

    RUN_DIR/shared/<stage>/             stand-ins trained once per run (clip_pretrain, ldm_vq, ldm_unet)
    RUN_DIR/<method>/seed<k>/<stage>/   LightningCLI roots (stage1..3), a CSVLogger metrics.csv below each
    RUN_DIR/<method>/seed<k>/recon/     ``lightning-fcae reconstruct`` output: metrics.json, grid.png
    RUN_DIR/<method>/seed<k>/summary.json

and this module writes ``RUN_DIR/report.html`` (images by relative path, no external CSS or JS, so the
folder can be copied or zipped as it is), ``RUN_DIR/plots/*.png`` (loss curves), ``table2.{md,csv}`` and,
when any run scored stage-2 identification, ``table3.{md,csv}``.

Our rows are mean ± std over seeds (std with ddof=1, just the mean for one seed) on the run's own data;
the paper's rows are its published NSD numbers, copied, never rerun: the two only compare when the run
used NSD with the paper's settings.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot state, no display

PUBLISHED_T2 = "published (NSD, paper Table 2)"
PUBLISHED_T3 = "published (NSD, paper Table 3)"
# (label, params in M, MSE, PixCorr, SSIM, CLIP)
PAPER_TABLE2 = (
    ("Mind-vis", 303, 0.513, 0.214, 0.260, 0.55),
    ("Vis-dec", 317, 0.486, 0.202, 0.251, 0.63),
    ("paper's model (fCAE)", 277, 0.485, 0.235, 0.302, 0.72),
)
# (label, encoder, params in M, modalities, top-1 in %); the paper does not say how many ways
PAPER_TABLE3 = (
    ("full", "fCAE", 102, "F+I+T", 26.3),
    ("ablation 1", "fCAE", 102, "F", 17.5),
    ("ablation 2", "fCAE", 102, "F+I", 23.4),
    ("ablation 3", "fCAE", 102, "F+T", 20.1),
    ("ablation 4", "MAE", 86, "F+I", 19.8),
    ("ablation 5", "MAE", 86, "F", 16.4),
)
# raw-convention metrics in Table 2: (key in recon["raw"]["mean"], column); CLIP is the embedding cosine,
# which is what the paper describes as its CLIP Score
TABLE2_RAW = (("mse", "MSE↓"), ("pixcorr", "PixCorr↑"), ("ssim", "SSIM↑"), ("clip_score", "CLIP↑"))
CSV_RAW = ("mse", "pixcorr", "ssim", "clip_score", "clip_2way", "clip_50way")
PAIRWISE = (("pairwise_mse", "MSE"), ("pairwise_pcc", "PixCorr (PCC)"), ("pairwise_ssim", "SSIM"))
TOP1 = ("top1_50way", "top1_2way")
DASH = "–"


@dataclass
class Table:
    """Cells as text, shared by the markdown and HTML writers so the two never disagree."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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
        summary.setdefault("method", path.parent.parent.name)
        summary.setdefault("seed", int(path.parent.name.removeprefix("seed")))
        summaries.append(summary | {"dir": path.parent})
    if not summaries:
        raise FileNotFoundError(
            f"no {run_dir}/<method>/seed<k>/summary.json: not a pipeline run folder, or no run finished yet"
        )
    return sorted(summaries, key=lambda s: (s["method"], s["seed"]))


def _training_losses(stage_dir: Path) -> dict[str, tuple[list[float], list[float]]]:
    """The loss series of the newest metrics.csv below a stage that logged a training loss: a rerun logs
    into a new version, the newest being the run later stages used, and a ``lightning test`` beside the
    fit (the pipeline's ``csv/test``) logs no ``train/*`` curve."""
    for path in sorted(stage_dir.glob("**/metrics.csv"), key=lambda p: p.stat().st_mtime, reverse=True):
        series = _loss_series(path)
        if any(name.startswith("train") for name in series):
            return series
    return {}


def _loss_series(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """``{column: (steps, values)}`` of every column ending in 'loss'; CSVLogger rows are sparse (a row
    holds only the keys logged at that step), so empty cells are skipped."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    with path.open(newline="") as handle:
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
    series = _training_losses(Path(stage_dir))
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


def mean_std(values: list[float], digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    """``mean ± std`` (ddof=1) over seeds; a lone seed has no spread to show, so just its value."""
    if not values:
        return DASH
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}{unit}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}{unit}"


def _stats(values: list[float]) -> tuple[str, str]:
    """CSV cells: mean and std (ddof=1) at full precision, empty where undefined."""
    mean = f"{statistics.fmean(values):.6g}" if values else ""
    std = f"{statistics.stdev(values):.6g}" if len(values) > 1 else ""
    return mean, std


def _by_method(summaries: list[dict], key: str, table: str) -> dict[str, list[dict]]:
    """Summaries of the methods that belong in ``table`` (their ``tables``; Table 2 when unsaid),
    grouped by method, keeping only those where ``key`` is set."""
    groups: dict[str, list[dict]] = {}
    for summary in summaries:
        if summary.get(key) and table in summary.get("tables", ["table2"]):
            groups.setdefault(summary["method"], []).append(summary)
    return groups


def _values(group: list[dict], *path: str) -> list[float]:
    """One number per seed along ``path`` (e.g. recon, raw, mean, mse); seeds without it are left out."""
    values = []
    for summary in group:
        node = summary
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, (int, float)):
            values.append(float(node))
    return values


def _cell(group: list[dict], *path: str, **fmt) -> str:
    """``mean ± std``, saying how many seeds it is over when some seeds lack the metric."""
    values = _values(group, *path)
    text = mean_std(values, **fmt)
    return text if len(values) in (0, len(group)) else f"{text} (n={len(values)})"


def _millions(group: list[dict], key: str) -> str:
    """Parameter count in M; distinct counts (configs differing between seeds) are all shown."""
    counts = dict.fromkeys(f"{v / 1e6:.3g}M" for v in _values(group, "params", key))
    return "/".join(counts) or DASH


def _data_note(summaries: list[dict]) -> str:
    """What our rows were measured on: the reconstructions' meta (split, images, subjects), else the
    driver's ``data_dir`` (a Table-3-only run reconstructs nothing)."""
    seen = []
    for summary in summaries:
        meta = (summary.get("recon") or {}).get("meta", {})
        if meta:
            subjects = ", ".join(meta.get("subjects", {}))
            where = f"split {meta.get('split', '?')}, {meta.get('images', '?')} images; {subjects}"
            text = f"{meta.get('data_dir', '?')} ({where})"
        else:
            text = summary.get("data_dir")
        if text and text not in seen:
            seen.append(text)
    return "; ".join(seen) or "data not recorded"


def _table2_parts(summaries: list[dict]) -> tuple[list[Table], list[list[str]]]:
    """Table 2 (raw convention, with the published rows), the pairwise table, and the CSV rows."""
    groups = _by_method(summaries, "recon", "table2")
    raw = Table(
        "Table 2: reconstruction (raw convention: MindEye / the paper)",
        ["Model", "Params", *(name for _, name in TABLE2_RAW), "n seeds"],
    )
    pairwise = Table(
        "Table 2, pair-wise convention (MinD-Vis / vis-dec: fraction of other images matched worse; chance 0.5)",
        ["Model", *(name for _, name in PAIRWISE), "n seeds"],
    )
    header = ["source", "method", "label", "n_seeds", "params_total_M"]
    header += [f"raw_{k}_{s}" for k in CSV_RAW for s in ("mean", "std")]
    header += [f"{k}_{s}" for k, _ in PAIRWISE for s in ("mean", "std")]
    rows = [header]
    for method, group in groups.items():
        label = group[0].get("label", method)
        scores = [_cell(group, "recon", "raw", "mean", k) for k, _ in TABLE2_RAW]
        raw.rows.append([label, _millions(group, "total"), *scores, str(len(group))])
        pairwise.rows.append(
            [label, *(_cell(group, "recon", "pairwise", "mean", k) for k, _ in PAIRWISE), str(len(group))]
        )
        params = _values(group, "params", "total")
        row = ["ours", method, label, str(len(group)), repr(params[0] / 1e6) if params else ""]
        row += [x for k in CSV_RAW for x in _stats(_values(group, "recon", "raw", "mean", k))]
        row += [x for k, _ in PAIRWISE for x in _stats(_values(group, "recon", "pairwise", "mean", k))]
        rows.append(row)
    for label, params, *scores in PAPER_TABLE2:
        raw.rows.append([f"{label} [{PUBLISHED_T2}]", f"{params}M", *(f"{v:.3f}" for v in scores), DASH])
        published = dict(zip(("mse", "pixcorr", "ssim", "clip_score"), scores))
        row = [PUBLISHED_T2, "", label, "", str(params)]
        row += [x for k in CSV_RAW for x in (repr(published[k]) if k in published else "", "")]
        rows.append(row + ["", ""] * len(PAIRWISE))
    raw.notes = [
        f"Ours: mean ± std over seeds (ddof=1) on {_data_note(summaries)}.",
        f"Rows marked [{PUBLISHED_T2}] are copied from the paper, not rerun here: they compare with ours "
        "only for a run on NSD with the paper's settings.",
        "CLIP = mean cosine of CLIP image embeddings (the paper's 'CLIP Score'); params = the whole "
        "stage-3 model; MSE/PixCorr/SSIM on the reconstructions' uint8 pixels, metrics per subject then "
        "averaged.",
    ]
    pairwise.notes = ["The paper publishes no pair-wise numbers; MinD-Vis reports this convention."]
    return [raw, pairwise], rows


def _table3_parts(summaries: list[dict]) -> tuple[list[Table], list[list[str]]]:
    """Table 3 (ablations) and the CSV rows. The primary top-1 is n-way identification of the
    *reconstructions* by their CLIP embeddings: the paper's F rows have no stage 2, so only a score on
    the reconstructions exists for every row. Stage-2 identification (the fMRI embedding among CLIP
    image embeddings) is shown beside it where the row has a stage 2."""
    table = Table(
        "Table 3: ablations, n-way top-1 of the reconstructions' CLIP embeddings (test, mean over subjects)",
        ["Model", "fMRI encoder", "Modalities", "Params (fMRI)", "top-1 50-way", "top-1 2-way"]
        + ["stage-2 top-1 50-way", "top-1 published", "n seeds"],
    )
    header = ["source", "method", "label", "encoder", "modalities", "n_seeds", "params_fmri_M"]
    header += [f"recon_clip_{n}way_{s}" for n in (50, 2) for s in ("mean", "std")]
    header += [f"stage2_{k}_{s}" for k in TOP1 for s in ("mean", "std")] + ["published_top1_percent"]
    rows = [header]
    percent = dict(digits=1, scale=100, unit="%")
    for method, group in _by_method(summaries, "recon", "table3").items():
        first = group[0]
        label, encoder, modalities = first.get("label", method), first.get("encoder"), first.get("modalities")
        recon = [_cell(group, "recon", "raw", "mean", f"clip_{n}way", **percent) for n in (50, 2)]
        stage2 = _cell(group, "identification", "top1_50way", **percent)
        table.rows.append(
            [label, encoder or DASH, modalities or DASH, _millions(group, "fmri"), *recon, stage2, DASH]
            + [str(len(group))]
        )
        params = _values(group, "params", "fmri")
        row = ["ours", method, label, encoder or "", modalities or "", str(len(group))]
        row += [repr(params[0] / 1e6) if params else ""]
        row += [x for n in (50, 2) for x in _stats(_values(group, "recon", "raw", "mean", f"clip_{n}way"))]
        rows.append(row + [x for k in TOP1 for x in _stats(_values(group, "identification", k))] + [""])
    for label, encoder, params, modalities, top1 in PAPER_TABLE3:
        table.rows.append(
            [
                f"{label} [{PUBLISHED_T3}]",
                encoder,
                modalities,
                f"{params}M",
                DASH,
                DASH,
                DASH,
                f"{top1}%",
                DASH,
            ]
        )
        rows.append([PUBLISHED_T3, "", label, encoder, modalities, "", str(params)] + [""] * 8 + [str(top1)])
    table.notes = [
        f"Ours: mean ± std over seeds (ddof=1) on {_data_note(summaries)}; params = fMRI encoder + "
        "latent regressor (fCAE) or the encoder alone (MAE), as in the paper.",
        f"Rows marked [{PUBLISHED_T3}] are copied from the paper, not rerun; it does not say how many "
        "ways its top-1 is over (MinD-Vis, its baseline, uses 50-way).",
    ]
    return [table], rows


def _markdown(table: Table) -> str:
    """A GitHub-flavoured markdown table; a '|' in a label would split its cell, so it is escaped."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [f"### {table.title}", "", line(table.header), "|" + "---|" * len(table.header)]
    lines += [line(row) for row in table.rows]
    return "\n".join(lines + [""] + [f"- {note}" for note in table.notes]) + "\n"


def _csv(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _render(parts: tuple[list[Table], list[list[str]]]) -> tuple[str, str]:
    tables, rows = parts
    return "\n".join(map(_markdown, tables)), _csv(rows)


def table2(summaries: list[dict]) -> tuple[str, str]:
    """The paper's Table 2 for this run: ``(markdown, csv)``; the markdown also holds the pair-wise
    table, since MinD-Vis' numbers are pair-wise and users compare with them."""
    return _render(_table2_parts(summaries))


def table3(summaries: list[dict]) -> tuple[str, str]:
    """The paper's Table 3 (ablations) for this run: ``(markdown, csv)``."""
    return _render(_table3_parts(summaries))


def _table_parts(summaries: list[dict]) -> dict[str, tuple[list[Table], list[list[str]]]]:
    """The tables this run has rows for: a summary's ``tables`` says which its method belongs in
    (``lightning-fcae pipeline`` writes it; Table 2 when unsaid)."""
    builders = {"table2": _table2_parts, "table3": _table3_parts}
    wanted = {t for s in summaries for t in s.get("tables", ["table2"])}
    return {name: build(summaries) for name, build in builders.items() if name in wanted}


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
        out.append(f"<img class='grid' src='{_link(run_dir, grid)}' alt='truth | reconstructions'>")
    if summary.get("recon"):
        out.append(_html_table(_metric_table(summary["recon"]), "h4"))
    if summary.get("identification"):
        ident = ", ".join(f"{k} {v:.4f}" for k, v in summary["identification"].items())
        out.append(f"<p>stage-2 identification (test): {_e(ident)}</p>")
    if summary.get("seconds"):
        times = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
        out.append(f"<p>time: {_e(times)}</p>")
    out.append(_curves_html(run_dir, seed_dir, prefix))
    return "\n".join(out)


STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 2px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.note { color: #555; font-size: small; margin: 0.2em 0; }
.curves { display: flex; flex-wrap: wrap; gap: 8px; }
img.grid { max-width: 100%; }
figure { margin: 0; }
"""


def _meta_html(run_dir: Path, summaries: list[dict]) -> str:
    """Run name, where the data came from, when, which seeds and methods."""
    seeds = sorted({s["seed"] for s in summaries})
    methods = list(dict.fromkeys(s["method"] for s in summaries))
    finished = max((s["dir"] / "summary.json").stat().st_mtime for s in summaries)
    items = [
        ("run dir", run_dir.resolve()),
        ("data", _data_note(summaries)),
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
    for name, parts in _table_parts(summaries).items():
        markdown, text = _render(parts)
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


def main(argv: list[str] | None = None) -> int:
    """``lightning-fcae report RUN_DIR``."""
    parser = argparse.ArgumentParser(prog="lightning-fcae report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="results/<run> folder written by the pipeline driver")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.run_dir)
        tables = _table_parts(load_summaries(args.run_dir))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in tables:
        print(f"wrote {args.run_dir / name}.md, {args.run_dir / name}.csv")
    if (args.run_dir / "plots").is_dir():
        print(f"wrote loss curves to {args.run_dir / 'plots'}")
    print(f"wrote {report}")
    return 0
