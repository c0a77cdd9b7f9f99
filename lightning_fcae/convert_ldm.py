"""``lightning-fcae convert-ldm CKPT --config YAML --out DIR``: a CompVis LDM checkpoint into the diffusers
folder stage 3 loads (the conversion itself is :func:`lightning_fcae.models.ldm_convert.convert_compvis_ldm`)."""

from __future__ import annotations

import sys

from .models.ldm_convert import convert_compvis_ldm
from .parsers import convert_ldm_parser


def main(argv: list[str] | None = None) -> int:
    """Convert, or say in one line why not (exit 2): these are the user's inputs being wrong or
    unsupported, so a message, not a traceback."""
    args = convert_ldm_parser().parse_args(argv)
    try:
        out = convert_compvis_ldm(
            args.ckpt, args.config, args.out, args.extract_ema, args.trust_pickle, args.overwrite
        )
    except (OSError, ValueError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}/vqvae, {out}/unet, {out}/scheduler")
    return 0
