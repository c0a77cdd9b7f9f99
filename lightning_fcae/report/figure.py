"""The methods side by side: each method's first reconstruction of the same test images, as the report's
table and as one PNG (``side_by_side.png``) that a paper or a README can show as it is."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

from ..files.atomic import atomic_file


def grid_rows(recon_dir: Path) -> tuple[list[dict], int] | None:
    """The samples of ``recon/grid.json`` (key, subject, caption) and the samples per image, when the
    reconstruction wrote one and every tile it names is on disk; None for a grid.png alone (a ridge
    yardstick, or a run from before grid.json) and for a grid.json whose keys are not plain file names."""
    path = recon_dir / "grid.json"
    if not path.is_file():
        return None
    grid = json.loads(path.read_text())
    rows, samples = grid["rows"], int(grid["samples"])
    if any(Path(str(r["key"])).name != str(r["key"]) or str(r["key"]) in ("", ".", "..") for r in rows):
        return None  # a key that is not a plain file name would point outside recon/: show grid.png alone
    tiles = [recon_dir / "truth" / f"{r['key']}.png" for r in rows]
    tiles += [recon_dir / "images" / f"{r['key']}_{i}.png" for r in rows for i in range(samples)]
    return (rows, samples) if all(t.is_file() for t in tiles) else None


def side_by_side(summaries: list[dict]) -> tuple[dict[str, dict], list[dict]] | None:
    """``({method: summary}, rows)``: for each method the lowest seed that wrote a labelled grid, and the
    grid rows (key, subject, caption) every one of them reconstructed, in the first method's order.
    None with fewer than two methods to compare."""
    firsts: dict[str, dict] = {}
    for summary in summaries:  # sorted by method, then seed
        if summary["method"] not in firsts and grid_rows(summary["dir"] / "recon"):
            firsts[summary["method"]] = summary
    if len(firsts) < 2:
        return None
    grids = {method: grid_rows(s["dir"] / "recon")[0] for method, s in firsts.items()}
    keys = set.intersection(*({r["key"] for r in rows} for rows in grids.values()))
    first = next(iter(firsts))
    return firsts, [r for r in grids[first] if r["key"] in keys]


LINE = 11  # pixels per header line (PIL's default bitmap font)


# PIL's default font has no glyph for the arrow (it draws an empty box); the HTML report keeps it
ASCII_FOR = {"→": "->"}


def header_lines(labels: list[str], side: int) -> list[list[str]]:
    """Each column's label wrapped to its tile width (PIL's default font is ~6 px a character), never cut:
    a cut label can read as another method ("F+I+T" cut to "F+I"). Arrows are spelled in
    ASCII, which the default font can draw."""
    spelled = ["".join(ASCII_FOR.get(ch, ch) for ch in label) for label in labels]
    return [textwrap.wrap(label, width=max(8, side // 6)) or [""] for label in spelled]


def write_side_by_side_png(summaries: list[dict], out: Path, rows: int = 12, zoom: int = 3) -> Path | None:
    """``out``: a header row of labels, then per test image the seen image and each method's first
    sample, enlarged ``zoom`` times without smoothing (the pixels are the data). None when there are
    fewer than two methods to compare."""
    found = side_by_side(summaries)
    if found is None:
        return None
    firsts, grid = found
    grid = grid[:rows]
    reference = next(iter(firsts.values()))["dir"] / "recon"
    columns = [("seen image", lambda key: reference / "truth" / f"{key}.png")]
    for method, summary in firsts.items():
        recon = summary["dir"] / "recon" / "images"
        columns.append((f"{summary.get('label', method)}", lambda key, recon=recon: recon / f"{key}_0.png"))
    with Image.open(columns[0][1](grid[0]["key"])) as probe:
        side = probe.width * zoom
    pad, labels = 4, header_lines([label for label, _ in columns], side)
    header = LINE * max(len(lines) for lines in labels) + 2
    width = len(columns) * (side + pad) + pad
    sheet = Image.new("RGB", (width, header + len(grid) * (side + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for c, lines in enumerate(labels):
        for k, line in enumerate(lines):
            draw.text((pad + c * (side + pad), 2 + k * LINE), line, fill="black")
    for r, row in enumerate(grid):
        for c, (_, path_of) in enumerate(columns):
            with Image.open(path_of(row["key"])) as tile:
                tile = tile.convert("RGB").resize((side, side), Image.NEAREST)
            sheet.paste(tile, (pad + c * (side + pad), header + pad + r * (side + pad)))
    with atomic_file(out) as handle:
        sheet.save(handle, format="PNG")
    return out
