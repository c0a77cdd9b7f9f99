"""``lightning-fcae reconstruct``'s options, apart from :mod:`.reconstruct` (which imports torch), so that
``--help`` and a mistyped option answer at once; a pipeline plan's ``reconstruct:`` section is checked
against them too (:func:`lightning_fcae.runs.plan.reconstruct_options`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def reconstruct_parser() -> argparse.ArgumentParser:
    """``lightning-fcae reconstruct``'s options (also what a pipeline plan's ``reconstruct:`` section may
    set); ``--help`` shows every default."""
    parser = argparse.ArgumentParser(
        prog="lightning-fcae reconstruct",
        description="Stage-3 evaluation: reconstruct a split's images from fMRI, save them as PNGs and "
        "score them.",
    )
    parser.add_argument(
        "--ckpt",
        type=Path,
        required=True,
        help="LDMFinetune (stage 3) checkpoint, or a run folder holding one",
    )
    parser.add_argument("--data", dest="data_dir", required=True, help="dataset directory or URL")
    parser.add_argument("--split", default="test", help="the split to reconstruct (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (a rerun resumes)")
    parser.add_argument(
        "--steps", type=int, default=None, help="DDIM steps (default: the model's sample_steps)"
    )
    parser.add_argument(
        "--guidance", type=float, default=None, help="guidance scale (default: the model's guidance_scale)"
    )
    parser.add_argument(
        "--samples", type=int, default=1, help="reconstructions per sample (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="samples per data batch (default: %(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sampling seed; each sample's noise: seed + crc32(key) (default: %(default)s)",
    )
    parser.add_argument(
        "--init",
        choices=("noise", "lowlevel"),
        default="noise",
        help="start each sample from noise (the paper) or img2img from the checkpoint's low-level image "
        "(stage 3 trained with lowlevel: ridge) (default: %(default)s)",
    )
    parser.add_argument(
        "--strength",
        type=float,
        default=None,
        help="img2img strength in [0, 1]: the part of the DDIM steps run from the noised low-level image "
        "(1.0: from noise, 0.0: the low-level image's VQ round trip); with --init lowlevel it is required: "
        "choose it on val (`--split val`), never on test",
    )
    parser.add_argument("--subjects", nargs="+", default=None, help="subjects to reconstruct (default: all)")
    parser.add_argument("--clip-model", default=None, help="open_clip model for the CLIP scores")
    parser.add_argument("--clip-pretrained", default=None, help="its weights: a local file or open_clip tag")
    parser.add_argument(
        "--n-way", type=int, default=50, help="N of the N-way CLIP identification (default: %(default)s)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: CUDA when available)")
    parser.add_argument(
        "--ldm", type=Path, default=None, help="the frozen LDM's folder, if it moved since stage 3 trained"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser
