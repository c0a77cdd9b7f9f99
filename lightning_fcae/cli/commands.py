"""The console scripts: ``lightning`` and ``lightning-fcae``.

``lightning fit --config configs/stage1_fcae.yaml`` is a LightningCLI in subclass mode, so any
``class_path`` model or data config works. ``lightning-fcae`` is the same CLI plus the commands of
:data:`COMMANDS` (data, pipeline, reconstruct, report, convert-ldm, stand-ins), each in its own module of
this folder; ``python -m lightning_fcae`` equals ``lightning-fcae``.

The ``lightning`` console name is not claimed by the lightning package itself (it ships only
``fabric``); a package that also installs ``lightning`` would clash, hence ``lightning-fcae``.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI

PACKAGE = Path(__file__).parents[1]  # lightning_fcae/: a ValueError raised in it refuses a setting


def default_wandb_mode() -> None:
    """W&B runs offline unless the user chose a mode or has logged in (then it syncs as usual)."""
    if "WANDB_MODE" in os.environ or os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    # `wandb login` writes the server's host into netrc; a self-hosted server is named by WANDB_BASE_URL
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    if not (netrc.exists() and host in netrc.read_text(errors="ignore")):
        os.environ["WANDB_MODE"] = "offline"


def run_lightning_cli(args: list[str] | None = None) -> LightningCLI:
    """The LightningCLI of ``lightning fit ...``; Lightning (and torch) are imported here, not with this
    module, so that ``--help`` of every other command is instant."""
    import lightning as L

    from ..data.datamodule import NSDDataModule
    from .lightning_cli import FCAECLI, silence_known_noise

    default_wandb_mode()
    silence_known_noise()
    return FCAECLI(
        L.LightningModule,
        NSDDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def user_error(exc: BaseException) -> BaseException | None:
    """The user's mistake behind ``exc``, if it is one: a :class:`DatasetError`, a missing file or
    Lightning's MisconfigurationException anywhere in its chain, or a ValueError this package raised
    to refuse a setting. jsonargparse wraps what a class raised while being built from the config in
    its own error, so it is found through ``__cause__``."""
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from ..data.schema import DatasetError

    while exc is not None:
        if isinstance(exc, (DatasetError, FileNotFoundError, MisconfigurationException)):
            return exc
        if isinstance(exc, ValueError) and exc.__traceback__ is not None:
            frame = exc.__traceback__
            while frame.tb_next is not None:
                frame = frame.tb_next
            if Path(frame.tb_frame.f_code.co_filename).is_relative_to(PACKAGE):
                return exc
        exc = exc.__cause__ or exc.__context__
    return None


def run_cli_for_users(args: list[str] | None = None) -> None:
    """:func:`run_lightning_cli` for the command line: a bad path or a refused setting prints one
    ``error:`` line (exit 2) instead of two chained tracebacks; anything else is raised as it is, and
    ``LIGHTNING_FCAE_TRACEBACK=1`` raises everything (to debug where a refusal came from)."""
    try:
        run_lightning_cli(args)
    except Exception as exc:
        mistake = user_error(exc)
        if mistake is None or os.environ.get("LIGHTNING_FCAE_TRACEBACK"):
            raise
        print(f"error: {mistake} (LIGHTNING_FCAE_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
        sys.exit(2)


def lightning_main() -> None:
    """The ``lightning`` command: ``lightning fit --config X.yaml``."""
    run_cli_for_users()


EXTRA_COMMANDS = """lightning-fcae: LightningCLI's fit / validate / test / predict (see `lightning-fcae fit --help`), and
  data {synth,check,inspect,nsd}   create, check and look at datasets
  pipeline --plan PLAN --out DIR   every stage of the paper's experiments in order (make demo)
  reconstruct --ckpt CKPT ...      stage-3 test-set reconstructions, grid and metrics
  report RUN_DIR                   report.html and Tables 2 / 3 of a pipeline run
  convert-ldm CKPT --config YAML   a CompVis LDM checkpoint -> a diffusers directory
  stand-ins train|check|verify     the synthetic benchmark's shipped CLIP / LDM stand-ins
each with its own --help.
"""
# the commands beside LightningCLI's: name -> the module of this folder whose main(argv) runs it
COMMANDS = {
    "data": "data",
    "pipeline": "pipeline",
    "reconstruct": "reconstruct",
    "report": "report",
    "convert-ldm": "convert_ldm",
    "stand-ins": "stand_ins",
}


def main(argv: list[str] | None = None) -> None:
    """The ``lightning-fcae`` command: LightningCLI subcommands plus those of :data:`COMMANDS`. Each
    command's module is imported only when it runs, and parses its options before importing what it runs,
    so ``--help`` never waits for torch."""
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(EXTRA_COMMANDS)
        sys.exit(0 if argv else 2)
    if argv[0] in COMMANDS:
        command = importlib.import_module(f"{__package__}.{COMMANDS[argv[0]]}")
        sys.exit(command.main(argv[1:]))
    # LightningCLI reads sys.argv itself (and warns when handed it as ``args``)
    run_cli_for_users(None if from_command_line else argv)
