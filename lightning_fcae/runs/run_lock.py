"""One pipeline per run folder, and no training child outliving its pipeline.

Two pipelines on one ``--out`` would train the same stage twice, interleave its logs and overwrite each
other's checkpoints; a stage's child process left running after its pipeline was killed races the rerun.
The lock is an advisory ``flock`` on ``OUT/.lock``: the kernel releases it when its holder dies, however it
dies, so a lock left by a killed run is taken over without any staleness guess.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".lock"


class RunFolderBusyError(RuntimeError):
    """Another live process holds the run folder's lock."""


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the body; :class:`RunFolderBusyError` names the holder's pid."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (the project's machines are Linux and macOS)
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise RunFolderBusyError(
                f"{folder} is in use by another pipeline (pid {holder}); wait for it to end or use another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()


def die_with_parent() -> None:
    """``preexec_fn`` of a stage's child: Linux sends it SIGTERM when the pipeline dies (even by SIGKILL);
    Lightning stops at the next step on SIGTERM. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
