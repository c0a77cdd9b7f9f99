"""Writes that a crash cannot leave half done: a killed process leaves the previous file or the new one.

A file is written to a hidden temporary name in its own folder, flushed to disk (``fsync``), then renamed
over the target with ``os.replace``, which is atomic within one file system; the folder is synced too, so
the rename itself survives a power cut. The temporary file must be in the target's folder: renaming from
another file system (``/tmp`` is often a tmpfs, or a local disk under an NFS run folder) falls back to
copying into the target, and a kill mid-copy leaves it cut off. Lightning's own checkpoint writer stages
through the system temp folder, hence :class:`lightning_fcae.files.checkpoint_io.AtomicCheckpointIO`.

A killed writer can leave its ``.NAME.PID.tmp`` file (or folder) behind, and one killed between the two
renames of :func:`atomic_folder` a ``.NAME.old`` folder. Nothing reads those; the first write of a later
process into that folder deletes them (:func:`remove_stale`): only names of that pattern, only when the
writer's process is gone (a live writer's file is never touched), ``.NAME.old`` only when ``NAME`` is whole.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

STALE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")  # what _temporary names
_checked: set[Path] = set()  # folders this process has cleaned already: one scan per folder and process


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (on this machine; a run folder shared over NFS by several machines would
    need the host in the name, which no run here does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale(folder: str | Path) -> list[Path]:
    """Delete what killed writers left in ``folder``: ``.NAME.PID.tmp`` whose process is gone, and
    ``.NAME.old`` whose ``NAME`` exists (the swap finished; the old copy is no longer needed). Returns what
    it deleted."""
    folder = Path(folder)
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in folder.iterdir():
            match = STALE.match(entry.name)
            stale = match is not None and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"]))
            if entry.name.startswith(".") and entry.name.endswith(".old"):
                stale = (folder / entry.name[1:-4]).exists()
            if stale:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def _clean_once(folder: Path) -> None:
    """:func:`remove_stale` on the first write of this process into ``folder`` (a reconstruction writes
    thousands of PNGs into one folder: scanning it before each would cost O(n^2))."""
    key = folder.resolve()
    if key not in _checked:
        remove_stale(folder)
        _checked.add(key)


def _temporary(path: Path) -> Path:
    """A name beside ``path`` that no reader globs for (hidden, ends in ``.tmp``) and no other process uses."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _sync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file to write ``path`` through: it replaces ``path`` only when the body finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_once(path.parent)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A temporary folder to fill; it then takes ``path``'s place (a diffusers ``save_pretrained`` export).
    Two renames, not one: a kill between them leaves no ``path`` (and a hidden ``.NAME.old``), which
    readers report as missing, never a folder with new config and old (or cut-off) weights."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_once(path.parent)
    tmp, old = _temporary(path), path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    _sync_folder(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def save_pretrained(model: Any, path: str | Path) -> Path:
    """``model.save_pretrained(path)`` (diffusers) through :func:`atomic_folder`."""
    with atomic_folder(path) as tmp:
        model.save_pretrained(tmp)
    return Path(path)
