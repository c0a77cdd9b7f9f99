"""``lightning-fcae data inspect``: what is in a dataset, at a glance."""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .schema import CAPTIONS_KEY, IMAGE_KEYS, Manifest, ShardIntegrityError
from .shards import check_shard_file, decode_fmri, decode_image, decode_json, read_shards, validate_captions
from .transforms import image_to_uint8_chw

TILE = 128  # px a sample is shown at, enlarged without smoothing so small images stay legible
CAPTION_LINES = 3


def captioned_grid(images: list[np.ndarray], captions: list[str], columns: int) -> Image.Image:
    """``[3, H, W]`` uint8 images, each enlarged to :data:`TILE` px (nearest neighbour) with its caption
    wrapped in the space under it."""
    font = ImageFont.load_default()
    line_height = 12
    cell_w, cell_h = TILE + 8, TILE + 8 + CAPTION_LINES * line_height
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (image, caption) in enumerate(zip(images, captions)):
        x, y = (index % columns) * cell_w + 4, (index // columns) * cell_h + 4
        tile = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).resize(
            (TILE, TILE), Image.NEAREST
        )
        sheet.paste(tile, (x, y))
        lines = textwrap.wrap(caption, width=TILE // 6, max_lines=CAPTION_LINES, placeholder=" ...")
        for row, text in enumerate(lines):
            draw.text((x, y + TILE + 2 + row * line_height), text, fill="black", font=font)
    return sheet


def inspect_dataset(
    root: str | Path, grid: Path | None = None, verify: bool = False, n_images: int = 16
) -> str:
    """Summarise the manifest, check every shard's size (and sha256 with ``verify``), and save a grid
    of sample images with their captions to ``grid`` (default ``inspect.png`` in the working
    directory: a dataset folder may be read-only or shared, so nothing is written into it). Sizes cost
    a stat each, so a truncated shard never passes as a healthy dataset."""
    root = Path(root)
    manifest = Manifest.load(root)
    lines = [f"dataset {manifest.name} (format v{manifest.format_version}) at {root}"]
    lines.append("source: " + json.dumps(manifest.source, sort_keys=True))
    lines.append(f"image size: {manifest.image_size}")
    lines.append("subjects: " + ", ".join(f"{s} ({n} voxels)" for s, n in manifest.subjects.items()))
    for name, split in manifest.splits.items():
        per_subject = {s: sum(x.samples for x in split.shards if x.subject == s) for s in manifest.subjects}
        size = sum(x.bytes for x in split.shards) / 2**20
        counts = ", ".join(f"{s} {n}" for s, n in per_subject.items() if n)
        lines.append(
            f"{name:5s}: {split.samples} samples in {len(split.shards)} shards ({size:.1f} MiB): {counts}"
        )
    bad = []
    for shard in (s for split in manifest.splits.values() for s in split.shards):
        try:
            check_shard_file(root / shard.path, shard, verify=verify)
        except ShardIntegrityError as exc:
            bad.append(str(exc))
    if bad:
        raise ShardIntegrityError(f"{len(bad)} shard(s) differ from the manifest: " + "; ".join(bad))
    lines.append(
        "verify: every shard matches its sha256"
        if verify
        else "shards: every size matches the manifest (--verify also checks sha256)"
    )

    split = "test" if "test" in manifest.splits else next(iter(manifest.splits))
    images, captions, labels = [], [], []
    for raw in itertools.islice(read_shards(root, manifest.splits[split].shards), n_images):
        key = raw["__key__"]
        meta = decode_json(raw["meta.json"], key, "meta.json")
        fmri = decode_fmri(raw["fmri.npy"], manifest.subjects[meta["subject"]], key, raw.get("__url__"))
        image_key = next(k for k in IMAGE_KEYS if k in raw)
        images.append(image_to_uint8_chw(decode_image(raw[image_key], key), manifest.image_size).numpy())
        caption = validate_captions(decode_json(raw[CAPTIONS_KEY], key, CAPTIONS_KEY), key)[0]
        captions.append(f"{key}: fmri {list(fmri.shape)} mean {np.mean(fmri):+.2f} | {caption}")
        labels.append(f"{key}: {caption}")
    grid = Path(grid or "inspect.png")
    if images:
        grid.parent.mkdir(parents=True, exist_ok=True)
        captioned_grid(images, labels, columns=int(np.ceil(np.sqrt(len(images))))).save(grid)
        lines.append(f"first {len(images)} {split} samples (grid: {grid}):")
        lines.extend("  " + c for c in captions)
    return "\n".join(lines)
