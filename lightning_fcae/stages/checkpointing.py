"""The checkpoint policy every stage shares, said once (the stage configs name only the folder)."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.callbacks import ModelCheckpoint


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
