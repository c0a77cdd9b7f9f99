"""The paper's Tables 2 and 3 from a run's summaries, as markdown and CSV (and :class:`Table` cells the
HTML page reuses, so the two never disagree).

Our rows are mean ± std over seeds (std with ddof=1, just the mean for one seed) on the run's own data;
the paper's rows are its published NSD numbers, copied, never rerun, in tables of their own: the two only
compare when the run used NSD with the paper's settings.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from dataclasses import dataclass, field

PUBLISHED_T2 = "published (NSD, paper Table 2)"
PUBLISHED_T3 = "published (NSD, paper Table 3)"
# a published table sits apart from ours, titled with its dataset: the two compare only on NSD
PUBLISHED_TITLE = "Published in the paper (its Table {n}), measured on NSD: copied, not rerun here"
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
# MindEye's perceptual metrics that are 2-way identifications (metrics/perceptual.py, kind "2-way")
PERCEPTUAL_2WAY = ("alexnet2", "alexnet5", "inception", "clip")
RIDGE_NOTE = (
    "Ridge yardstick: a closed-form ridge from voxels per subject (penalty chosen on val), predicting the "
    "pixels at the reconstructions' resolution, scored exactly as the reconstructions are; a method below "
    "it has not earned its keep on this data."
)


@dataclass
class Table:
    """Cells as text, shared by the markdown and HTML writers so the two never disagree."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def chance_level(name: str, block: str = "") -> float | None:
    """What guessing scores on an identification metric, so every such figure can be read against it:
    ``1/n`` for n-way top-1 (``top1_<n>way``, per subject ``top1_<n>way_<subject>``, ``clip_<n>way``),
    0.5 for the pair-wise and MindEye 2-way metrics; None for a metric that is no identification."""
    if match := re.fullmatch(r"(?:top1|clip)_(\d+)way(?:_.+)?", name):
        return 1 / int(match.group(1))
    if block == "pairwise" or name.startswith("pairwise_"):
        return 0.5
    if block == "perceptual" and name in PERCEPTUAL_2WAY:
        return 0.5
    return None


def _nway_header(prefix: str, n: int) -> str:
    """A top-1 column's header with its chance level, e.g. ``top-1 50-way (chance 2%)``."""
    return f"{prefix} {n}-way (chance {100 * chance_level(f'top1_{n}way'):g}%)"


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


def data_note(summaries: list[dict]) -> str:
    """What our rows were measured on: the reconstructions' meta (split, images, subjects), else the
    driver's ``data_dir`` (a Table-3-only run reconstructs nothing)."""
    seen, described = [], set()  # notes, and the data dirs they already name
    metas = [(s.get("recon") or {}).get("meta", {}) for s in summaries]
    for meta in filter(None, metas):
        subjects = ", ".join(meta.get("subjects", {}))
        where = f"split {meta.get('split', '?')}, {meta.get('images', '?')} images; {subjects}"
        text = f"{meta.get('data_dir', '?')} ({where})"
        if text not in seen:
            seen.append(text)
        described.add(meta.get("data_dir"))
    for summary, meta in zip(summaries, metas):
        if not meta and summary.get("data_dir") and summary["data_dir"] not in described:
            seen.append(summary["data_dir"])
            described.add(summary["data_dir"])
    return "; ".join(seen) or "data not recorded"


def _table2_parts(summaries: list[dict]) -> tuple[list[Table], list[list[str]]]:
    """Table 2 (raw convention), the pair-wise table, the paper's published rows in a table of their
    own (they were measured on NSD, ours on this run's data), and the CSV rows."""
    groups = _by_method(summaries, "recon", "table2")
    raw = Table(
        "Table 2: reconstruction, this run (raw convention: MindEye / the paper)",
        ["Model", "Params", *(name for _, name in TABLE2_RAW), "n seeds"],
    )
    pairwise = Table(
        "Table 2, pair-wise convention (MinD-Vis / vis-dec: fraction of other images matched worse; chance 0.5)",
        ["Model", *(name for _, name in PAIRWISE), "n seeds"],
    )
    published = Table(PUBLISHED_TITLE.format(n=2), ["Model", "Params", *(name for _, name in TABLE2_RAW)])
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
        published.rows.append([label, f"{params}M", *(f"{v:.3f}" for v in scores)])
        paper = dict(zip(("mse", "pixcorr", "ssim", "clip_score"), scores))
        row = [PUBLISHED_T2, "", label, "", str(params)]
        row += [x for k in CSV_RAW for x in (repr(paper[k]) if k in paper else "", "")]
        rows.append(row + ["", ""] * len(PAIRWISE))
    raw.notes = [
        f"Mean ± std over seeds (ddof=1) on {data_note(summaries)}.",
        "CLIP = mean cosine of CLIP image embeddings (the paper's 'CLIP Score'); params = the whole "
        "stage-3 model; MSE/PixCorr/SSIM on the reconstructions' uint8 pixels, metrics per subject then "
        "averaged.",
    ]
    pairwise.notes = ["The paper publishes no pair-wise numbers; MinD-Vis reports this convention."]
    published.notes = [
        "The paper's numbers on the Natural Scenes Dataset (NSD): they compare with this run's only when "
        "it used NSD with the paper's settings."
    ]
    if "ridge" in groups:
        raw.notes.append(RIDGE_NOTE)
        pairwise.notes.append(RIDGE_NOTE)
    return [raw, pairwise, published], rows


def _table3_parts(summaries: list[dict]) -> tuple[list[Table], list[list[str]]]:
    """Table 3 (ablations), the paper's published rows in a table of their own, and the CSV rows. The
    primary top-1 is n-way identification of the *reconstructions* by their CLIP embeddings: the paper's
    F rows have no stage 2, so only a score on the reconstructions exists for every row. Stage-2
    identification (the fMRI embedding among CLIP image embeddings) is shown beside it where the row
    has a stage 2."""
    table = Table(
        "Table 3: ablations, this run: n-way top-1 of the reconstructions' CLIP embeddings "
        "(test, mean over subjects)",
        ["Model", "fMRI encoder", "Modalities", "Params (fMRI)"]
        + [_nway_header("top-1", 50), _nway_header("top-1", 2), _nway_header("stage-2 top-1", 50), "n seeds"],
    )
    published = Table(
        PUBLISHED_TITLE.format(n=3),
        ["Model", "fMRI encoder", "Modalities", "Params (fMRI)", "top-1 (ways not stated)"],
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
            [label, encoder or DASH, modalities or DASH, _millions(group, "fmri"), *recon, stage2]
            + [str(len(group))]
        )
        params = _values(group, "params", "fmri")
        row = ["ours", method, label, encoder or "", modalities or "", str(len(group))]
        row += [repr(params[0] / 1e6) if params else ""]
        row += [x for n in (50, 2) for x in _stats(_values(group, "recon", "raw", "mean", f"clip_{n}way"))]
        rows.append(row + [x for k in TOP1 for x in _stats(_values(group, "identification", k))] + [""])
    for label, encoder, params, modalities, top1 in PAPER_TABLE3:
        published.rows.append([label, encoder, modalities, f"{params}M", f"{top1}%"])
        rows.append([PUBLISHED_T3, "", label, encoder, modalities, "", str(params)] + [""] * 8 + [str(top1)])
    table.notes = [
        f"Mean ± std over seeds (ddof=1) on {data_note(summaries)}; params = fMRI encoder + "
        "latent regressor (fCAE) or the encoder alone (MAE), as in the paper.",
    ]
    published.notes = [
        "The paper's numbers on the Natural Scenes Dataset (NSD); it does not say how many ways its top-1 "
        "is over (MinD-Vis, its baseline, uses 50-way: chance 2%)."
    ]
    if any(s["method"] == "ridge" for s in summaries):
        table.notes.append(
            RIDGE_NOTE + " In this table its top-1 is that of its pixel images; its 'stage-2' column is "
            "the ridge from voxels to the CLIP image embedding, identified like stage 2's fMRI embedding."
        )
    return [table, published], rows


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


def render(parts: tuple[list[Table], list[list[str]]]) -> tuple[str, str]:
    tables, rows = parts
    return "\n".join(map(_markdown, tables)), _csv(rows)


def table2(summaries: list[dict]) -> tuple[str, str]:
    """The paper's Table 2 for this run: ``(markdown, csv)``; the markdown also holds the pair-wise
    table, since MinD-Vis' numbers are pair-wise and users compare with them."""
    return render(_table2_parts(summaries))


def table3(summaries: list[dict]) -> tuple[str, str]:
    """The paper's Table 3 (ablations) for this run: ``(markdown, csv)``."""
    return render(_table3_parts(summaries))


def table_parts(summaries: list[dict]) -> dict[str, tuple[list[Table], list[list[str]]]]:
    """The tables this run has rows for: a summary's ``tables`` says which its method belongs in
    (``lightning-fcae pipeline`` writes it; Table 2 when unsaid)."""
    builders = {"table2": _table2_parts, "table3": _table3_parts}
    wanted = {t for s in summaries for t in s.get("tables", ["table2"])}
    return {name: build(summaries) for name, build in builders.items() if name in wanted}
