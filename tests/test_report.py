"""``lightning-fcae report``: the tables, plots and HTML page of a hand-made pipeline run folder."""

from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from lightning_fcae.cli import main
from lightning_fcae.report import load_summaries, plot_curves, table2, table3, write_report
from lightning_fcae.report.curves import training_losses
from lightning_fcae.report.tables import data_note

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# method -> per seed: (mse, pixcorr, ssim, clip_score, pairwise_mse, top1_50way or None)
SCORES = {
    "fcae": [(0.1, 0.2, 0.3, 0.6, 0.7, 0.08), (0.3, 0.4, 0.5, 0.8, 0.9, 0.12)],
    "mindvis": [(0.5, 0.1, 0.2, 0.5, 0.6, None), (0.7, 0.3, 0.2, 0.7, 0.8, None)],
}
LABELS = {"fcae": "fCAE (ours)", "mindvis": "MinD-Vis <repro>"}
# the reason metrics/perceptual.py gives for a metric whose checkpoint is not on disk
MISSING = (
    "{name} needs the checkpoint {file} at /hub/checkpoints/{file} (torch hub dir /hub, set by TORCH_HOME). "
    "Nothing is downloaded here: fetch https://x/{file} elsewhere and copy it there."
)
# the labelled grid `lightning-fcae reconstruct` writes: two samples of each of two subjects, 2 draws each
GRID = {
    "samples": 2,
    "rows": [
        {"key": f"{subject}_{n}", "subject": subject, "caption": f"a red square {n}"}
        for subject in ("subj01", "subj02")
        for n in (0, 1)
    ],
}
METRICS_CSV = """epoch,step,train/loss,val/loss,train/cos,lr-AdamW
,0,,,,0.001
0,0,2.0,,0.1,
0,4,1.0,,0.2,
0,4,,1.5,,
1,9,0.5,,0.3,
1,9,,0.8,,
"""


def _recon(mse, pixcorr, ssim, clip, pairwise_mse) -> dict:
    raw = {"mse": mse, "pixcorr": pixcorr, "ssim": ssim, "clip_score": clip, "clip_2way": 0.9}
    raw["clip_50way"] = pixcorr  # any known value: Table 3 reads it
    pairwise = {"pairwise_mse": pairwise_mse, "pairwise_pcc": 0.6, "pairwise_ssim": 0.55}
    # two subjects whose mean is the value above
    per = {s: {k: v + d for k, v in raw.items()} for s, d in (("subj01", -0.01), ("subj02", 0.01))}
    return {
        "raw": {"mean": raw, "per_subject": per},
        "pairwise": {"mean": pairwise, "per_subject": {"subj01": pairwise, "subj02": pairwise}},
        "perceptual": {
            "mean": {"alexnet2": 0.7},
            "per_subject": {"subj01": {"alexnet2": 0.7}, "subj02": {"alexnet2": 0.7}},
            "skipped": {
                "swav": "no weights on disk",
                **{
                    name: MISSING.format(name=name, file=f"{name}.pth")
                    for name in ("inception", "lpips_alex")
                },
            },
        },
        "meta": {
            "data_dir": "data/synth-tiny",
            "split": "test",
            "images": 96,
            "subjects": {"subj01": 48, "subj02": 48},
        },
    }


def _grid(recon_dir: Path, tint: int = 0) -> None:
    """grid.json and the tiles it names, as `lightning-fcae reconstruct` writes them: a colour per
    target, sample and ``tint`` (one per method), so a tile out of place shows."""
    for folder in ("truth", "images"):
        (recon_dir / folder).mkdir()
    for r, row in enumerate(GRID["rows"]):
        Image.new("RGB", (4, 4), (200, 10 * r, 30)).save(recon_dir / "truth" / f"{row['key']}.png")
        for i in range(GRID["samples"]):
            colour = (30 + tint, 10 * r + i, 200)
            Image.new("RGB", (4, 4), colour).save(recon_dir / "images" / f"{row['key']}_{i}.png")
    (recon_dir / "grid.json").write_text(json.dumps(GRID))


def _stage(stage_dir: Path) -> None:
    logs = stage_dir / "lightning_logs" / "version_0"
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text(METRICS_CSV)
    (stage_dir / "config.yaml").write_text("seed_everything: 0\n")


def _fake_run(root: Path, names: dict[str, str] | None = None) -> Path:
    """Two methods x two seeds as the driver writes them, plus one shared stand-in. ``names`` renames
    the method folders (ablation runs name them ``<encoder>_<modalities>``)."""
    run = root / "results" / "demo"
    for method, seeds in SCORES.items():
        for seed, (mse, pixcorr, ssim, clip, pw, top1) in enumerate(seeds):
            seed_dir = run / (names or {}).get(method, method) / f"seed{seed}"
            for stage in ("stage1", "stage2", "stage3"):
                _stage(seed_dir / stage)
            (seed_dir / "recon").mkdir()
            Image.new("RGB", (8, 4), (200, 30, 30)).save(seed_dir / "recon" / "grid.png")
            _grid(seed_dir / "recon", tint=100 * list(SCORES).index(method))
            recon = _recon(mse, pixcorr, ssim, clip, pw)
            (seed_dir / "recon" / "metrics.json").write_text(json.dumps(recon))
            summary = {
                "run": "demo",
                "method": (names or {}).get(method, method),
                "tables": ["table2", "table3"] if names else ["table2"],
                "label": LABELS[method],
                "seed": seed,
                "params": {"fmri": 1_234_567, "total": 23_456_789},
                "modalities": "F+I+T" if method == "fcae" else "F",
                "encoder": "fCAE" if method == "fcae" else "MAE",
                "identification": {"top1_2way": 0.6, "top1_50way": top1, "top1_50way_subj01": top1}
                if top1
                else None,
                "recon": recon,
                "seconds": {"stage1": 12.5, "stage2": 3.0, "stage3": 30.0},
            }
            (seed_dir / "summary.json").write_text(json.dumps(summary))
    _stage(run / "shared" / "ldm_vq")
    return run


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [value for name, value in attrs if name in ("src", "href")]


def test_table2_mean_std_and_published_rows(tmp_path):
    summaries = load_summaries(_fake_run(tmp_path))
    assert [(s["method"], s["seed"]) for s in summaries] == [
        ("fcae", 0),
        ("fcae", 1),
        ("mindvis", 0),
        ("mindvis", 1),
    ]
    markdown, text = table2(summaries)

    fcae = next(line for line in markdown.splitlines() if line.startswith("| fCAE (ours)"))
    # mse 0.1, 0.3 -> 0.2 ± 0.1414; pixcorr 0.2, 0.4; ssim 0.3, 0.5; clip 0.6, 0.8
    assert (
        fcae == "| fCAE (ours) | 23.5M | 0.200 ± 0.141 | 0.300 ± 0.141 | 0.400 ± 0.141 | 0.700 ± 0.141 | 2 |"
    )
    mindvis = next(line for line in markdown.splitlines() if line.startswith("| MinD-Vis <repro>"))
    assert "0.600 ± 0.141" in mindvis and "0.200 ± 0.000" in mindvis  # mse 0.5, 0.7; ssim 0.2, 0.2
    # the paper's NSD rows come after ours, in a table of their own whose title names the dataset
    ours, published = markdown.split("### Published in the paper (its Table 2), measured on NSD")
    assert "| Mind-vis | 303M | 0.513 | 0.214 | 0.260 | 0.550 |" in published
    assert "| Vis-dec | 317M | 0.486 | 0.202 | 0.251 | 0.630 |" in published
    assert "| paper's model (fCAE) | 277M | 0.485 | 0.235 | 0.302 | 0.720 |" in published
    assert "fCAE (ours)" not in published and "0.513" not in ours and "Mind-vis" not in ours
    assert "data/synth-tiny (split test, 96 images; subj01, subj02)" in markdown
    # the pair-wise table: pairwise_mse 0.7, 0.9
    assert "| fCAE (ours) | 0.800 ± 0.141 | 0.600 ± 0.000 | 0.550 ± 0.000 | 2 |" in markdown

    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["source"] for r in rows] == ["ours", "ours", *["published (NSD, paper Table 2)"] * 3]
    assert float(rows[0]["raw_mse_mean"]) == pytest.approx(0.2)
    assert float(rows[0]["raw_mse_std"]) == pytest.approx(0.1414214, abs=1e-6)
    assert float(rows[0]["pairwise_mse_mean"]) == pytest.approx(0.8)
    assert float(rows[0]["params_total_M"]) == pytest.approx(23.456789)
    assert rows[2]["label"] == "Mind-vis" and float(rows[2]["raw_clip_score_mean"]) == 0.55


def test_one_seed_shows_the_mean_alone(tmp_path):
    summaries = [s for s in load_summaries(_fake_run(tmp_path)) if s["seed"] == 0]
    markdown, _ = table2(summaries)
    assert "| fCAE (ours) | 23.5M | 0.100 | 0.200 | 0.300 | 0.600 | 1 |" in markdown


def test_table3_ablation_rows(tmp_path):
    summaries = load_summaries(_fake_run(tmp_path, names={"fcae": "fcae", "mindvis": "mindvis"}))
    markdown, text = table3(summaries)
    # reconstructions' CLIP 50-way 0.2, 0.4 -> 30.0 ± 14.1 %; stage 2 (fcae only) 0.08, 0.12 -> 10.0 ± 2.8 %
    assert "| fCAE (ours) | fCAE | F+I+T | 1.23M | 30.0 ± 14.1% | 90.0 ± 0.0% | 10.0 ± 2.8% | 2 |" in markdown
    assert "| MinD-Vis <repro> | MAE | F | 1.23M | 20.0 ± 14.1% | 90.0 ± 0.0% | – | 2 |" in markdown
    header = "| top-1 50-way (chance 2%) | top-1 2-way (chance 50%) | stage-2 top-1 50-way (chance 2%) |"
    assert header in markdown
    ours, published = markdown.split("### Published in the paper (its Table 3), measured on NSD")
    assert "| full | fCAE | F+I+T | 102M | 26.3% |" in published
    assert "| ablation 5 | MAE | F | 86M | 16.4% |" in published and "| ablation" not in ours
    rows = list(csv.DictReader(io.StringIO(text)))
    assert float(rows[0]["recon_clip_50way_mean"]) == pytest.approx(0.3)
    assert float(rows[0]["stage2_top1_50way_mean"]) == pytest.approx(0.1)
    assert rows[1]["stage2_top1_50way_mean"] == ""
    assert [r["published_top1_percent"] for r in rows[2:]] == ["26.3", "17.5", "23.4", "20.1", "19.8", "16.4"]


def test_plot_curves(tmp_path):
    run = _fake_run(tmp_path)
    out = tmp_path / "plots" / "stage1.png"
    assert plot_curves(run / "fcae" / "seed0" / "stage1", out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    # a `lightning test` run beside the fit logs newer metrics without a training curve: the fit is plotted
    test_csv = run / "fcae" / "seed0" / "stage2" / "csv" / "test" / "metrics.csv"
    test_csv.parent.mkdir(parents=True)
    test_csv.write_text("epoch,step,test/loss,test/top1_50way\n0,0,0.3,0.1\n")
    assert sorted(training_losses(test_csv.parents[2])) == ["train/loss", "val/loss"]
    assert not plot_curves(test_csv.parents[1], tmp_path / "test_only.png")
    # no metrics.csv: no plot, no file
    assert not plot_curves(run / "fcae" / "seed0" / "recon", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_report_references_existing_files_only(tmp_path):
    run = _fake_run(tmp_path)
    (run / "fcae" / "seed1" / "recon" / "grid.json").unlink()  # a ridge yardstick or an older run
    report = write_report(run)
    assert report == run / "report.html"
    page = report.read_text()
    parser = _Refs()
    parser.feed(page)
    assert parser.refs, "the report links nothing"
    missing = [ref for ref in parser.refs if not (run / unquote(ref)).is_file()]
    assert not missing
    assert not any("://" in ref for ref in parser.refs)  # self-contained: no external CSS/JS/images
    refs = set(parser.refs)
    assert "fcae/seed1/recon/grid.png" in refs and "plots/shared_ldm_vq.png" in refs
    assert "fcae/seed0/recon/grid.png" not in refs  # its labelled tiles instead
    assert {f"plots/{m}_seed{s}_stage{k}.png" for m in SCORES for s in (0, 1) for k in (1, 2, 3)} <= refs
    assert "MinD-Vis &lt;repro&gt;" in page and "<repro>" not in page  # escaped
    assert "no weights on disk" in page  # skipped metrics are said, not hidden
    # ... and those that only lack a checkpoint share one short note naming the files and their folder
    assert page.count("needs the checkpoint") == 0 and page.count("skipped inception, lpips_alex:") == 4
    assert "copy inception.pth, lpips_alex.pth into /hub/checkpoints (TORCH_HOME)" in page
    assert "top1_2way 0.6000 (chance 0.50)" in page and "top1_50way_subj01" in page  # per subject too
    assert "(chance 0.02)" in page
    for name in ("table2.md", "table2.csv"):
        assert (run / name).stat().st_size > 0


class _Cells(HTMLParser):
    """The text of every table header and cell, and the figure captions, in page order."""

    def __init__(self):
        super().__init__()
        self.cells: list[tuple[str, str]] = []
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("th", "td", "figcaption", "h2", "h4"):
            self._open = tag
            self.cells.append((tag, ""))

    def handle_endtag(self, tag):
        self._open = None if tag == self._open else self._open

    def handle_data(self, data):
        if self._open:
            tag, text = self.cells[-1]
            self.cells[-1] = (tag, text + data)


def test_report_grids_are_labelled_per_subject_and_side_by_side(tmp_path):
    run = _fake_run(tmp_path)
    page = write_report(run).read_text()
    parser = _Cells()
    parser.feed(page)
    headings = [text for tag, text in parser.cells if tag in ("h2", "h4")]
    assert "reconstructions, subj01" in headings and "reconstructions, subj02" in headings
    headers = [text for tag, text in parser.cells if tag == "th"]
    assert headers.count("target") == 2 * 2 * 2 + 1  # 2 methods x 2 seeds x 2 subjects, + side by side
    assert headers.count("sample 1") == headers.count("sample 2") == 8
    # the side-by-side table: one column per method (its first seed) on the same targets
    assert "fCAE (ours), seed 0" in headers and "MinD-Vis <repro>, seed 0" in headers
    assert "fCAE (ours), seed 1" not in headers
    captions = [text for tag, text in parser.cells if tag == "figcaption"]
    assert captions.count("subj02_1: a red square 1") == 4 + 1  # under every target
    assert page.count("src='fcae/seed0/recon/images/subj01_0_1.png'") == 1  # sample 2, once
    assert page.count("src='mindvis/seed0/recon/images/subj01_0_0.png'") == 2  # its grid + side by side
    # tiles are enlarged without smoothing
    assert re.search(r"img\.tile \{[^}]*width: \d{3}px[^}]*image-rendering: pixelated", page)
    # ... and the same comparison as one figure: per row the seen image, then each method's sample 1,
    # each pixel enlarged 3x into a 3x3 block
    from PIL import Image

    from lightning_fcae.report.figure import LINE, header_lines, side_by_side

    assert "href='side_by_side.png'" in page
    firsts, rows = side_by_side(load_summaries(run))
    labels = ["seen image"] + [summary["label"] for summary in firsts.values()]
    wrapped = header_lines(labels, side=12)
    assert [" ".join(lines) for lines in wrapped] == labels  # wrapped, never cut
    header = LINE * max(map(len, wrapped)) + 2
    with Image.open(run / "side_by_side.png") as sheet:
        sheet = np.asarray(sheet.convert("RGB"))
    for r, row in enumerate(rows[:2]):
        for c, path in enumerate(
            [
                run / "fcae/seed0/recon/truth",
                run / "fcae/seed0/recon/images",
                run / "mindvis/seed0/recon/images",
            ]
        ):
            name = f"{row['key']}.png" if c == 0 else f"{row['key']}_0.png"
            tile = np.asarray(Image.open(path / name).convert("RGB"))
            side = 3 * tile.shape[0]
            top, left = header + 4 + r * (side + 4), 4 + c * (side + 4)
            np.testing.assert_array_equal(sheet[top : top + side : 3, left : left + side : 3], tile)


def test_report_gives_chance_beside_every_identification_figure(tmp_path):
    run = _fake_run(tmp_path / "t3", names={"fcae": "fcae_FIT", "mindvis": "mae_F"})
    page = write_report(run).read_text()
    parser = _Cells()
    parser.feed(page)
    cells = [text for _, text in parser.cells]
    # Table 3's identification columns name their chance
    assert "top-1 50-way (chance 2%)" in cells and "top-1 2-way (chance 50%)" in cells
    assert "stage-2 top-1 50-way (chance 2%)" in cells
    # per-run metrics tables: a chance column, filled for every identification metric and only those
    rows = re.findall(r"<tr><td>(\w+)</td><td>(\w+)</td><td>([\d.]*)</td>", page)
    chance = {(block, name): value for block, name, value in rows}
    assert chance[("raw", "clip_2way")] == "0.50" and chance[("raw", "clip_50way")] == "0.02"
    assert chance[("pairwise", "pairwise_mse")] == "0.50" and chance[("perceptual", "alexnet2")] == "0.50"
    assert chance[("raw", "mse")] == "" and chance[("raw", "clip_score")] == ""
    # the stage-2 identification line: every figure, per subject too
    line = next(line for line in page.splitlines() if "identification among CLIP image embeddings" in line)
    assert "top1_2way 0.6000 (chance 0.50)" in line and "top1_50way_subj01 0.0800 (chance 0.02)" in line


def test_published_rows_stand_apart_in_the_report(tmp_path):
    page = write_report(_fake_run(tmp_path)).read_text()
    ours = page.index("<h2>Table 2: reconstruction, this run")
    published = page.index("<h2>Published in the paper (its Table 2), measured on NSD")
    section = page[published : page.index("</table>", published)]
    assert ours < published and "Mind-vis" in section and "fCAE (ours)" not in section
    assert "Mind-vis" not in page[ours:published]


def test_loss_plot_titles_name_the_run_and_stage(tmp_path, monkeypatch):
    import lightning_fcae.report.page as page_module

    titles = []
    monkeypatch.setattr(page_module, "plot_curves", lambda stage, png, title: titles.append(title))
    write_report(_fake_run(tmp_path))
    assert "fCAE (ours), seed 1: stage2 loss" in titles and "shared stand-in: ldm_vq loss" in titles


def test_a_resumed_stage_keeps_its_loss_history(tmp_path):
    from lightning_fcae.runs.stage_runner import keep_csv_history

    log_dir = tmp_path / "stage1" / "csv" / "fit"
    log_dir.mkdir(parents=True)
    for steps in ((0, 1), (2, 3), (4,)):  # killed twice, resumed twice
        keep_csv_history(log_dir)  # what the pipeline does before resuming
        rows = "".join(f"0,{step},{10 - step}\n" for step in steps)
        (log_dir / "metrics.csv").write_text("epoch,step,train/loss\n" + rows)
    assert sorted(p.name for p in log_dir.iterdir()) == [
        "metrics.csv",
        "metrics.part1.csv",
        "metrics.part2.csv",
    ]
    assert training_losses(tmp_path / "stage1") == {"train/loss": ([0, 1, 2, 3, 4], [10, 9, 8, 7, 6])}


def test_a_resumed_stage_logs_each_step_once(tmp_path):
    """Killed after logging steps 0-3 with its last checkpoint at step 2, a stage resumes at step 2 and logs
    steps 2-4 again: the history keeps one row per step, the resumed run's (issue 25)."""
    from lightning_fcae.runs.stage_runner import keep_csv_history

    log_dir = tmp_path / "stage1" / "csv" / "fit"
    log_dir.mkdir(parents=True)
    killed = "".join(f"0,{step},{10 - step}\n" for step in range(4))
    (log_dir / "metrics.csv").write_text("epoch,step,train/loss\n" + killed)
    keep_csv_history(log_dir, resume_step=2)
    resumed = "".join(f"0,{step},{20 - step}\n" for step in (2, 3, 4))
    (log_dir / "metrics.csv").write_text("epoch,step,train/loss\n" + resumed)
    assert training_losses(tmp_path / "stage1") == {"train/loss": ([0, 1, 2, 3, 4], [10, 9, 18, 17, 16])}


def test_figure_labels_spell_arrows_the_default_font_can_draw():
    from lightning_fcae.report.figure import header_lines

    (lines,) = header_lines(["Ridge yardstick (voxels → pixels; → CLIP tokens)"], side=600)
    assert lines == ["Ridge yardstick (voxels -> pixels; -> CLIP tokens)"]


def test_table3_only_for_ablation_runs(tmp_path):
    run = _fake_run(tmp_path)  # a Table-2 run: its summaries name no other table
    write_report(run)
    assert (run / "table2.md").is_file() and not (run / "table3.md").exists()
    assert "Table 3" not in (run / "report.html").read_text()
    ablations = _fake_run(tmp_path / "t3", names={"fcae": "fcae_FIT", "mindvis": "mae_F"})
    write_report(ablations)
    assert "| fCAE (ours) | fCAE | F+I+T |" in (ablations / "table3.md").read_text()


def test_missing_run_or_summaries_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_summaries(tmp_path / "nowhere")
    (tmp_path / "empty" / "fcae" / "seed0").mkdir(parents=True)
    with (
        pytest.raises(FileNotFoundError, match="summary.json"),
        pytest.warns(UserWarning, match="fcae/seed0"),
    ):
        write_report(tmp_path / "empty")
    (tmp_path / "empty" / "fcae" / "seed0" / "summary.json").write_text("[]")
    with pytest.raises(ValueError, match="holds a list, not a pipeline summary"):
        write_report(tmp_path / "empty")


@pytest.mark.parametrize(("key", "value"), [("method", "../../../elsewhere/x"), ("seed", "0/../../x")])
def test_a_summary_cannot_name_files_outside_the_run(tmp_path, key, value):
    run = _fake_run(tmp_path)
    path = run / "fcae" / "seed0" / "summary.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {key: value}))
    with pytest.raises(ValueError, match=f"its {key} .* is not its folder's"):
        write_report(run)
    assert not (tmp_path / "elsewhere").exists() and not (run / "report.html").exists()


def test_data_note_names_each_dataset_once():
    recon = {"meta": {"data_dir": "data/x", "split": "test", "images": 4, "subjects": {"subj01": 4}}}
    summaries = [{"recon": recon, "data_dir": "data/x"}, {"recon": None, "data_dir": "data/x"}]
    assert data_note(summaries) == "data/x (split test, 4 images; subj01)"
    assert data_note([*summaries, {"data_dir": "data/y"}]).endswith("; data/y")


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_cli(tmp_path, capsys):
    run = _fake_run(tmp_path)
    assert _run(["report", str(run)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {run / 'report.html'}" in printed and str(run / "table2.md") in printed
    assert (run / "report.html").is_file() and (run / "table2.csv").is_file()

    assert _run(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_grid_key_that_is_not_a_file_name_reads_nothing_outside_recon(tmp_path):
    """Tiles are found by the sample keys in recon/grid.json: a key such as ``../../secret`` must not
    make the report or side_by_side.png read (or link) a file outside the run's recon folder."""
    from lightning_fcae.report.figure import grid_rows

    recon = tmp_path / "recon"
    recon.mkdir()
    _grid(recon)
    assert grid_rows(recon) is not None
    grid = json.loads((recon / "grid.json").read_text())
    (tmp_path / "secret.png").write_bytes((recon / "truth" / f"{grid['rows'][0]['key']}.png").read_bytes())
    for i in range(grid["samples"]):
        (tmp_path / f"secret_{i}.png").write_bytes(b"")
    grid["rows"][0]["key"] = "../../secret"  # recon/truth/../../secret.png is tmp_path/secret.png
    (recon / "grid.json").write_text(json.dumps(grid))
    assert grid_rows(recon) is None
