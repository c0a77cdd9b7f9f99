"""The sha256 of a file, read in chunks: how shards, norm stats, checkpoints, LDM folders and the shipped
stand-ins are identified by content."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
