"""The pipeline's overall progress by work done, with an estimated time left.

Counting stages misleads: the second of eight stages can be the longest. Each task (a stage's fit or
test, the ridge yardstick, a reconstruction) is weighed by the samples it processes, as planned before
anything runs: a fit ``max_steps x batch_size`` (or ``max_epochs x`` the training split), a stage-2 test
the test split, a reconstruction the test split times its sampling steps, the ridge one pass over the
data. A training sample and a sampling pass do not cost the same on every stage, so the time left is an
estimate (``~``), from the seconds per unit of the tasks run so far in this invocation: tasks skipped
because they were done before count as done, but not towards the rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


def clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` past an hour) for the console."""
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def fit_work(trainer: dict, batch_size: int, train_samples: int) -> float:
    """Training samples a fit processes: ``max_steps x batch_size``, or ``max_epochs`` passes over the
    training split, whichever ends it first (Lightning stops at the first limit reached)."""
    limits = []
    if (trainer.get("max_steps") or -1) > 0:
        limits.append(trainer["max_steps"] * batch_size)
    epochs = trainer.get("max_epochs")
    if epochs is not None and epochs > 0:
        limits.append(epochs * train_samples)
    return float(min(limits)) if limits else float(train_samples)


@dataclass
class Progress:
    """Planned work per task (``weights``, in samples processed) and what is done of it."""

    weights: dict[str, float]
    started: float = field(default_factory=time.monotonic)
    finished: set[str] = field(default_factory=set)
    ran_work: float = 0.0  # work of the tasks run in this invocation ...
    ran_seconds: float = 0.0  # ... and the seconds they took: the rate the time left is estimated by

    def done(self) -> float:
        """Fraction of the planned work that is done (run now or before)."""
        total = sum(self.weights.values())
        return sum(self.weights.get(task, 0.0) for task in self.finished) / total if total else 0.0

    def left(self) -> str:
        """The estimated time left, once a task has run in this invocation."""
        if not self.ran_work:
            return "time left: known after the first stage that runs"
        remaining = sum(w for task, w in self.weights.items() if task not in self.finished)
        return f"~{clock(math.ceil(remaining * self.ran_seconds / self.ran_work))} left"

    def line(self, task: str) -> str:
        """The console's prefix for a task that starts: which task of how many, the share of the work
        done, the time elapsed and the estimated time left."""
        index = list(self.weights).index(task) + 1 if task in self.weights else len(self.finished) + 1
        elapsed = clock(time.monotonic() - self.started)
        return f"[{index}/{len(self.weights)} · {100 * self.done():.0f}% done · {elapsed} elapsed · {self.left()}]"

    def finish(self, task: str, seconds: float | None) -> None:
        """Mark ``task`` done; ``seconds`` is what it took to run now, None when it was skipped."""
        self.finished.add(task)
        if seconds is not None:
            self.ran_work += self.weights.get(task, 0.0)
            self.ran_seconds += seconds
