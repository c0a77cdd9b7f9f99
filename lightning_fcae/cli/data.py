"""``lightning-fcae data``: create, check and look at datasets (:mod:`lightning_fcae.data`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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


def main(argv: list[str]) -> int:
    """``lightning-fcae data synth | check | inspect | nsd``; a dataset the command refuses (or one that
    exists already) is one ``error:`` line, exit 2."""
    args = _data_parser().parse_args(argv)
    from ..data.schema import DatasetError

    try:
        return run(args)
    except (DatasetError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.command == "synth":
        from ..data.synthetic import generate

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
        from ..data.check import check_dataset, format_check_report

        print(format_check_report(check_dataset(args.path, n_way=args.n_way, seed=args.seed)))
    elif args.command == "inspect":
        from ..data.inspect import inspect_dataset

        print(inspect_dataset(args.path, grid=args.grid, verify=args.verify))
    elif args.command == "nsd":
        from ..data.nsd import convert_nsd

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
