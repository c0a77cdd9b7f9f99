"""The argument parser of ``convert-ldm``, whose module imports torch, kept apart so that ``--help`` and a
mistyped option answer at once: :func:`lightning_fcae.cli.main` parses with it before importing the
command."""

from __future__ import annotations

import argparse
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
