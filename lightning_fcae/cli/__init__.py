"""The command line, the top of the package: the ``lightning`` and ``lightning-fcae`` console scripts
(:mod:`.commands`), the LightningCLI subclass every stage runs under (:mod:`.lightning_cli`), and one module
per ``lightning-fcae`` command (``data``, ``pipeline``, ``reconstruct``, ``report``, ``convert-ldm``,
``stand-ins``) that parses its options, runs the code of the folder below that does the work, and turns a
user's mistake into one ``error:`` line (exit 2). A command imports what it runs only once its options
are parsed, so ``--help`` never waits for torch.

It may import every other folder; nothing of the package imports it (``python -m lightning_fcae`` runs it).
"""

from .commands import lightning_main, main, run_lightning_cli

__all__ = ["lightning_main", "main", "run_lightning_cli"]
