"""``lightning-fcae reconstruct --ckpt CKPT --data DIR --out DIR``: a split's reconstructions, saved and
scored (:mod:`lightning_fcae.inference.reconstruct`); a mistake is one ``error:`` line, exit 2."""

from __future__ import annotations

import sys

from ..inference.parser import reconstruct_parser


def main(argv: list[str] | None = None) -> int:
    """``lightning-fcae reconstruct --ckpt CKPT --data DIR --out DIR [...]``."""
    args = reconstruct_parser().parse_args(argv)
    from ..data.schema import DatasetError
    from ..inference.reconstruct import ReconstructionError, format_metrics, reconstruct_split
    from ..inference.sampling import Img2ImgError
    from ..models.checkpoints import CheckpointError

    try:
        metrics = reconstruct_split(**vars(args))
    except (ReconstructionError, Img2ImgError, CheckpointError, FileNotFoundError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_metrics(metrics))
    print(f"wrote {args.out}/images, {args.out}/grid.png, {args.out}/metrics.json")
    return 0
