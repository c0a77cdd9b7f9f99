"""Helpers for the tests that compare one process with two DDP ranks on CPU (gloo).

The two ranks run in a child process (Lightning starts rank 1 as the same command), so a hung
collective cannot hang pytest: :func:`run_ranks` kills the child's whole session after a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from lightning_fcae.models.vit import random_masking

REPO = Path(__file__).resolve().parents[1]


def fixed_masking(batch, num_patches, mask_ratio, generator=None, device=None):
    """One mask for every sample and rank (a pure function of the shapes): patched over a model's
    ``random_masking`` so that one process and two ranks see the same masks."""
    ids = random_masking(1, num_patches, mask_ratio, torch.Generator().manual_seed(0), "cpu")
    return tuple(i.expand(batch, -1).to(device) for i in ids)


def run_ranks(command: list[str], cwd: Path, what: str, timeout: float = 240) -> None:
    """Run ``command`` (which starts the DDP ranks) with the repo importable; fail the test naming
    ``what`` if it exits non-zero (with the end of its stderr) or hangs (every rank is killed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True, stderr=subprocess.PIPE)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # both ranks: they share the session
        pytest.fail(f"{what} hung")
    if process.returncode != 0:
        pytest.fail(f"{what} failed:\n{stderr.decode()[-2000:]}")
