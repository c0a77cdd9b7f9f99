"""The checkpoint policy every stage shares, said once (the stage configs name only the folder), and the
best-on-val checkpoint that stage 2 hands on."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lightning.pytorch.callbacks import Callback, ModelCheckpoint


class StageCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with the defaults a chain of stages needs:

    * ``save_top_k=1``: the newest epoch's file is kept, so a crashed or preempted run leaves something to
      resume (Lightning 2.6 writes ``last.ckpt`` only beside a saved one);
    * ``save_last="link"``: ``last.ckpt`` links to that file, the path the next stage reads;
    * ``enable_version_counter=False``: a rerun replaces ``last.ckpt`` rather than writing
      ``last-v1.ckpt`` beside it for the next stage to miss.

    Any of ModelCheckpoint's arguments may still be given. These three are parameters here, not defaults
    merged into ``kwargs``: LightningCLI passes every ModelCheckpoint argument explicitly, its own defaults
    included.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        save_top_k: int = 1,
        save_last: bool | Literal["link"] | None = "link",
        enable_version_counter: bool = False,
        **kwargs,
    ):
        super().__init__(
            dirpath=dirpath,
            save_top_k=save_top_k,
            save_last=save_last,
            enable_version_counter=enable_version_counter,
            **kwargs,
        )


class BestCheckpoint(Callback):
    """``best.ckpt`` in ``dirpath``: the model with the best ``monitor`` on val so far, which the next stage
    starts from (the pipeline reads it before ``last.ckpt``), so training is kept only where it helped on val.

    When the module knows the val scores of its untrained model (``initial_val_scores``: stage 2's linear
    path set to the ridge) that model is the first candidate, saved when training starts: an epoch replaces
    it only with a better score. Without ``monitor`` among the scores (fewer val samples than ways), the
    ``fallback`` metric decides. A resumed run keeps its best score (callback state).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        monitor: str = "val/top1_50way",
        fallback: str | None = "val/top1_2way",
        mode: Literal["max", "min"] = "max",
        filename: str = "best.ckpt",
    ):
        self.dirpath, self.monitor, self.fallback, self.mode, self.filename = (
            dirpath,
            monitor,
            fallback,
            mode,
            filename,
        )
        self.best: float | None = None
        self.metric: str | None = None  # the metric the best score is of

    def path(self, trainer) -> Path:
        """In ``dirpath``, else beside the stage's other checkpoints (its ModelCheckpoint's folder)."""
        callback = trainer.checkpoint_callback
        folder = (
            self.dirpath or (callback and callback.dirpath) or Path(trainer.default_root_dir) / "checkpoints"
        )
        return Path(folder) / self.filename

    def _score(self, scores: dict) -> tuple[str, float] | None:
        for name in (self.monitor, self.fallback):
            if name is not None and name in scores and (self.metric in (None, name)):
                return name, float(scores[name])
        return None

    def _keep(self, trainer, metric: str, score: float) -> None:
        better = self.best is None or (score > self.best if self.mode == "max" else score < self.best)
        if better:
            trainer.save_checkpoint(self.path(trainer))
            self.best, self.metric = score, metric

    def on_train_start(self, trainer, pl_module) -> None:
        found = self._score(getattr(pl_module, "initial_val_scores", {}) or {})
        if found is not None and self.best is None:
            self._keep(trainer, *found)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        found = self._score(trainer.callback_metrics)
        if found is not None:
            self._keep(trainer, *found)

    def state_dict(self) -> dict:
        return {"best": self.best, "metric": self.metric}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.metric = state_dict["best"], state_dict["metric"]
