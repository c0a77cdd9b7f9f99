"""``lightning-fcae convert-ldm CKPT --config YAML --out DIR``: a CompVis LDM checkpoint into the diffusers
folder stage 3 loads (the conversion itself is :func:`lightning_fcae.models.ldm_convert.convert_compvis_ldm`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def convert_ldm_parser() -> argparse.ArgumentParser:
    """``lightning-fcae convert-ldm``'s options."""
    parser = argparse.ArgumentParser(
        prog="lightning-fcae convert-ldm",
        description="CompVis latent-diffusion checkpoint -> diffusers LDM directory.",
    )
    parser.add_argument("ckpt", type=Path, help="CompVis checkpoint (.ckpt or .safetensors)")
    parser.add_argument("--config", type=Path, required=True, help="its LatentDiffusion YAML config")
    parser.add_argument("--out", type=Path, required=True, help="diffusers directory to write")
    parser.add_argument("--extract-ema", action="store_true", help="use the EMA UNet weights")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="unpickle the checkpoint in full, which can execute arbitrary code from it: only for a file "
        "from a source you know",
    )
    parser.add_argument("--overwrite", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Convert, or say in one line why not (exit 2): these are the user's inputs being wrong or
    unsupported, so a message, not a traceback."""
    args = convert_ldm_parser().parse_args(argv)
    from ..models.ldm_convert import convert_compvis_ldm  # imports torch: after --help has answered

    try:
        out = convert_compvis_ldm(
            args.ckpt, args.config, args.out, args.extract_ema, args.trust_pickle, args.overwrite
        )
    except (OSError, ValueError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}/vqvae, {out}/unet, {out}/scheduler")
    return 0
