"""Random draws in training (masks, noise, timesteps, sparsity) that differ between ranks and resumes.

``seed_everything(seed)`` runs in every DDP process, so without this each rank would draw the same
masks, noise and timesteps for its batch positions: a global batch of 8 ranks would hold one rank's
variety of timesteps, eight times over. And a run resumed at step k would replay the draws of step 0.
"""

from __future__ import annotations

import os

import lightning as L
import numpy as np
import torch


def reseed_for_rank_and_step(trainer: L.Trainer) -> None:
    """Seed torch's global generators (CPU and every GPU) from (run seed, rank, step): reproducible
    for a given run, distinct across ranks, and fresh after a resume."""
    run_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything
    state = np.random.SeedSequence([run_seed, trainer.global_rank, trainer.global_step]).generate_state(1)
    torch.manual_seed(int(state[0]))


class RankSeededModule(L.LightningModule):
    """Base of the training stages: reseeds the training draws per rank (and resume) at train start."""

    def on_train_start(self) -> None:
        reseed_for_rank_and_step(self.trainer)
