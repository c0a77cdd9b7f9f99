"""DataWaitMonitor measures the time training waits for its batches."""

from __future__ import annotations

import time

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_fcae.metrics.timing import DataWaitMonitor


class _Delayed(Dataset):
    """Eight samples, each taking ``delay`` seconds to load."""

    def __init__(self, delay: float):
        self.delay = delay

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        time.sleep(self.delay)
        return torch.ones(4)


class _Linear(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _logged(tmp_path, delay: float) -> dict[str, float]:
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=8,
        log_every_n_steps=4,
        callbacks=[DataWaitMonitor()],
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Linear(), DataLoader(_Delayed(delay), batch_size=1))
    return {k: v.item() for k, v in trainer.logged_metrics.items() if k.startswith("perf/")}


def test_data_wait_is_the_loading_time(tmp_path):
    slow = _logged(tmp_path / "slow", delay=0.05)
    assert slow["perf/data_wait_ms"] >= 45  # each batch sleeps 50 ms in the loader
    assert slow["perf/data_wait_fraction"] > 0.5
    fast = _logged(tmp_path / "fast", delay=0.0)
    assert fast["perf/data_wait_ms"] < 45
    assert set(fast) == {"perf/data_wait_ms", "perf/step_ms", "perf/data_wait_fraction"}


def test_progress_estimates_the_time_left_from_the_work_run_now(monkeypatch):
    from lightning_fcae.runs import progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    state = progress.Progress({"a": 10.0, "b": 30.0, "c": 60.0}, started=now[0])
    assert (
        state.line("a") == "[1/3 · 0% done · 0:00 elapsed · time left: known after the first stage that runs]"
    )
    state.finish("a", None)  # done before: counts as done, not towards the rate
    now[0] += 75
    state.finish("b", 45.0)  # 30 units in 45 s: the 60 left take ~90 s
    assert state.line("c") == "[3/3 · 40% done · 1:15 elapsed · ~1:30 left]"
    assert progress.clock(3725) == "1:02:05"
    # a fit stops at whichever limit comes first: max_steps x batch or max_epochs passes
    assert progress.fit_work({"max_steps": 10, "max_epochs": 5}, 8, 100) == 80
    assert progress.fit_work({"max_steps": -1, "max_epochs": 2}, 8, 100) == 200
