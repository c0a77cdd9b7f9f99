"""Command-line entry points.

``lightning fit --config configs/stage1_fcae.yaml`` is a LightningCLI in subclass mode, so any
``class_path`` model or data config works. ``lightning-fcae`` is the same CLI plus ``data``
subcommands (synth, check, inspect, nsd) and ``report RUN_DIR`` (an HTML page of a pipeline run);
``python -m lightning_fcae`` equals ``lightning-fcae``.

The ``lightning`` console name is not claimed by the lightning package itself (it ships only
``fabric``); a package that also installs ``lightning`` would clash, hence ``lightning-fcae``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from .inference.parser import reconstruct_parser
from .parsers import convert_ldm_parser

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI


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

    from .data.datamodule import NSDDataModule
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

    from .data.schema import DatasetError

    while exc is not None:
        if isinstance(exc, (DatasetError, FileNotFoundError, MisconfigurationException)):
            return exc
        if isinstance(exc, ValueError) and exc.__traceback__ is not None:
            frame = exc.__traceback__
            while frame.tb_next is not None:
                frame = frame.tb_next
            if Path(frame.tb_frame.f_code.co_filename).is_relative_to(Path(__file__).parent):
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


def _data_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-fcae data", description="Create and inspect datasets.")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="generate the synthetic NSD-like benchmark")
    synth.add_argument("--profile", choices=["tiny", "small", "paper"], default="small")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true")
    synth.add_argument(
        "--train-images", type=int, default=None, help="per subject, val included (default: the profile's)"
    )
    synth.add_argument(
        "--test-images", type=int, default=None, help="shared by all subjects (default: the profile's)"
    )

    check = sub.add_parser("check", help="ridge-decoder sanity check: is there signal, is it not trivial?")
    check.add_argument("path", type=Path)
    check.add_argument("--n-way", type=int, default=50)
    check.add_argument("--seed", type=int, default=0)

    inspect = sub.add_parser("inspect", help="print the manifest and counts, write a sample grid PNG")
    inspect.add_argument("path", type=Path)
    inspect.add_argument(
        "--out", "--grid", dest="grid", type=Path, default=Path("inspect.png"),
        help="the sample grid's PNG (default: inspect.png in the working directory, never the dataset's)",
    )  # fmt: skip
    inspect.add_argument("--verify", action="store_true", help="also sha256-check every shard")

    nsd = sub.add_parser("nsd", help="convert an NSD release into shards")
    nsd.add_argument("--root", type=Path, required=True, help="NSD release directory")
    nsd.add_argument("--coco", type=Path, default=None, help="dir with COCO captions_{train,val}2017.json")
    nsd.add_argument("--subjects", type=int, nargs="+", default=[1, 2, 5, 7])
    nsd.add_argument("--out", type=Path, required=True)
    nsd.add_argument("--val-fraction", type=float, default=0.1)
    nsd.add_argument("--image-size", type=int, default=None)
    nsd.add_argument("--seed", type=int, default=0)
    nsd.add_argument("--allow-missing-captions", action="store_true", help="use a placeholder caption")
    nsd.add_argument("--overwrite", action="store_true")
    return parser


def data_main(argv: list[str]) -> int:
    args = _data_parser().parse_args(argv)
    if args.command == "synth":
        from .data.synthetic import generate

        manifest = generate(
            args.profile,
            args.out,
            seed=args.seed,
            overwrite=args.overwrite,
            train_images=args.train_images,
            test_images=args.test_images,
        )
        print(f"wrote {manifest.name} to {args.out}: " + _counts(manifest))
    elif args.command == "check":
        from .data.check import check_dataset, format_check_report

        print(format_check_report(check_dataset(args.path, n_way=args.n_way, seed=args.seed)))
    elif args.command == "inspect":
        from .data.inspect import inspect_dataset

        print(inspect_dataset(args.path, grid=args.grid, verify=args.verify))
    elif args.command == "nsd":
        from .data.nsd import convert_nsd

        manifest = convert_nsd(
            args.root,
            subjects=tuple(args.subjects),
            out=args.out,
            coco_dir=args.coco,
            val_fraction=args.val_fraction,
            seed=args.seed,
            image_size=args.image_size,
            overwrite=args.overwrite,
            allow_missing_captions=args.allow_missing_captions,
        )
        print(f"wrote {manifest.name} to {args.out}: " + _counts(manifest))
    return 0


def _counts(manifest) -> str:
    return ", ".join(f"{name} {split.samples}" for name, split in manifest.splits.items())


EXTRA_COMMANDS = """lightning-fcae: LightningCLI's fit / validate / test / predict (see `lightning-fcae fit --help`), and
  data {synth,check,inspect,nsd}   create, check and look at datasets
  pipeline --plan PLAN --out DIR   every stage of the paper's experiments in order (make demo)
  reconstruct --ckpt CKPT ...      stage-3 test-set reconstructions, grid and metrics
  report RUN_DIR                   report.html and Tables 2 / 3 of a pipeline run
  convert-ldm CKPT --config YAML   a CompVis LDM checkpoint -> a diffusers directory
  stand-ins train|check|verify     the synthetic benchmark's shipped CLIP / LDM stand-ins
each with its own --help.
"""
# commands whose modules import torch: their options are parsed first, so --help and a usage error
# answer before seconds of imports
EARLY_PARSERS = {"reconstruct": reconstruct_parser, "convert-ldm": convert_ldm_parser}


def main(argv: list[str] | None = None) -> None:
    """The ``lightning-fcae`` command: LightningCLI subcommands plus ``data ...``, ``convert-ldm``,
    ``reconstruct``, ``pipeline`` and ``report``. Each command's module is imported only when it runs,
    so ``--help`` never waits for torch."""
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(EXTRA_COMMANDS)
        sys.exit(0 if argv else 2)
    if argv[0] in EARLY_PARSERS:
        EARLY_PARSERS[argv[0]]().parse_args(argv[1:])
    if argv[0] == "convert-ldm":
        from .convert_ldm import main as convert_ldm

        sys.exit(convert_ldm(argv[1:]))
    if argv[0] == "pipeline":
        from .runs.pipeline import main as pipeline

        sys.exit(pipeline(argv[1:]))
    if argv[0] == "reconstruct":
        from .inference.reconstruct import main as reconstruct

        sys.exit(reconstruct(argv[1:]))
    if argv[0] == "stand-ins":
        from .stand_ins import main as stand_ins

        sys.exit(stand_ins(argv[1:]))
    if argv[0] == "report":
        from .report import main as report

        sys.exit(report(argv[1:]))
    if argv[0] == "data":
        from .data.schema import DatasetError

        try:
            sys.exit(data_main(argv[1:]))
        except (DatasetError, FileExistsError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
    # LightningCLI reads sys.argv itself (and warns when handed it as ``args``)
    run_cli_for_users(None if from_command_line else argv)
