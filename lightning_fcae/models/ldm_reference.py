"""The fingerprint of an LDM folder: what a stage-3 checkpoint records of the frozen LDM it leaves out.

Stage 3 keeps only what it trains; the frozen UNet and VQ weights stay in the LDM folder, which the
checkpoint names with its content sha256 (:func:`ldm_reference`). Resuming the stage and rebuilding the
reconstruction pipeline both check that the folder still holds those weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..files.hashing import sha256_file


def ldm_files(root: Path) -> dict[str, list[int]]:
    """``{path relative to root: [size, mtime_ns]}`` of every file under an LDM folder, in the order the
    folder's sha256 lists them: a stat of each file, nothing read."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        files[path.relative_to(root).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return files


def ldm_reference(path: str | Path, recorded: dict | None = None) -> dict:
    """``{path, sha256, files}`` of an LDM folder: ``sha256`` of its files' names and sha256s, so that a
    checkpoint which leaves the frozen weights to the folder can tell whether it still holds the same
    ones, and ``files`` (:func:`ldm_files`). Hashing reads the whole folder (~1.6 GB at paper size), so
    when ``recorded`` (a checkpoint's ``ldm`` entry) lists the very same files, sizes and modification
    times, its sha256 is taken as it is; anything else (a file touched, added, removed or rewritten) hashes
    the folder. Like make's, the shortcut trusts times:
    bytes changed in place under the same size and mtime would pass. Nothing is written to the folder."""
    root = Path(path).resolve()
    files = ldm_files(root)
    if recorded is not None and recorded.get("files") == files:
        return {"path": str(root), "sha256": recorded["sha256"], "files": files}
    listing = "\n".join(f"{name} {sha256_file(root / name)}" for name in files)
    return {"path": str(root), "sha256": hashlib.sha256(listing.encode()).hexdigest(), "files": files}
