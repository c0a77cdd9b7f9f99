"""How long training waits for data: the figure that says whether the loader keeps up with the device."""

from __future__ import annotations

import time

import lightning as L


class DataWaitMonitor(L.Callback):
    """Logs ``perf/data_wait_ms`` (host time spent getting each training batch), ``perf/step_ms`` (host
    time of the step itself) and ``perf/data_wait_fraction`` = wait / (wait + step), each averaged over
    the steps since the last log line.

    The wait is the time between the end of one training batch and the start of the next: Lightning
    fetches, transfers and augments (``on_after_batch_transfer``) the next batch in between. Nothing
    synchronises the device: on a GPU the host runs ahead of the kernels, so a wait near zero means the
    loader keeps the kernel queue full, and a large fraction means the GPU idles on data. The first
    batch of an epoch (worker start-up) is left out.
    """

    def __init__(self) -> None:
        self._batch_start: float | None = None
        self._last_end: float | None = None
        self._waits: list[float] = []
        self._steps: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        self._batch_start = time.perf_counter()
        if self._last_end is not None:
            self._waits.append(self._batch_start - self._last_end)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self._last_end = time.perf_counter()
        self._steps.append(self._last_end - self._batch_start)
        if not self._waits or (trainer.global_step % trainer.log_every_n_steps):
            return
        wait, step = sum(self._waits) / len(self._waits), sum(self._steps) / len(self._steps)
        pl_module.log_dict(
            {
                "perf/data_wait_ms": 1000 * wait,
                "perf/step_ms": 1000 * step,
                "perf/data_wait_fraction": wait / (wait + step),
            },
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )
        self._waits.clear()
        self._steps.clear()
