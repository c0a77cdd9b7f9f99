"""Stage-3 sampling speed: images/s and seconds per batch of guided DDIM at 50 and 250 steps.

    python benchmarks/sample_latency.py                      # CPU: "small" LDM, batch 4, 50 steps
    python benchmarks/sample_latency.py --steps 50 250 --batch 1 4
    python benchmarks/sample_latency.py                      # GPU: cin256-f4, batch 1 16 32, 50 and 250 steps

Times ``LDMFinetune.sample`` end to end (fMRI encoder, conditioner, ``steps`` guided UNet calls on
a batch of 2b, VQ decode) with random weights: the speed does not depend on their values. The fMRI
encoder runs once per batch, not per step, so its size (``--encoder-size``) hardly matters.
``lightning-fcae reconstruct`` samples a whole data batch (``--batch-size``) per call, one seed per test
sample; this times one seed per batch, at the same speed.

GPU: bf16 autocast (as ``inference/reconstruct.py`` samples), timing between ``torch.cuda.synchronize`` calls,
peak memory = ``max_memory_allocated`` of the timed batches. CPU: fp32, peak memory = the process' peak
RSS (model included). One batch at 2 steps warms up (allocator, cuDNN autotuning) before timing.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time

import torch

from lightning_fcae.models.ldm import vq_downsampling
from lightning_fcae.stages.diffusion import LDMFinetune


def build(ldm: str, num_voxels: int, encoder_size: str, device: torch.device) -> LDMFinetune:
    torch.manual_seed(0)
    return LDMFinetune(num_voxels, ldm_config=ldm, encoder_size=encoder_size).to(device).eval()


def measure(
    model: LDMFinetune, batch: int, steps: int, guidance: float, repeats: int, device: torch.device
) -> dict:
    fmri = torch.randn(batch, model.hparams.num_voxels, device=device)  # b V
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", torch.bfloat16) if cuda else contextlib.nullcontext()
    with autocast:
        model.sample(fmri, steps=2, guidance=guidance)  # warm-up
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for seed in range(repeats):
            images = model.sample(fmri, steps=steps, guidance=guidance, seed=seed)  # b 1 3 H W
        if cuda:
            torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    assert torch.isfinite(images).all()
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {"batch": batch, "steps": steps, "images_s": batch / seconds, "s_batch": seconds, "peak_GiB": peak}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ldm", default=None, help="LDM config (default: cin256-f4 on GPU, small on CPU)")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=None, help="default: 1 16 32 on GPU, 4 on CPU"
    )
    parser.add_argument(
        "--steps", type=int, nargs="+", default=None, help="default: 50 250 on GPU, 50 on CPU"
    )
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument(
        "--voxels", type=int, default=15728, help="padded voxels (NSD subj01: 15724 -> 15728)"
    )
    parser.add_argument("--encoder-size", default="tiny")
    parser.add_argument("--repeats", type=int, default=1, help="timed batches per row")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    ldm = args.ldm or ("cin256-f4" if gpu else "small")
    batches = args.batch or ([1, 16, 32] if gpu else [4])
    steps = args.steps or ([50, 250] if gpu else [50])

    model = build(ldm, args.voxels, args.encoder_size, device)
    size = model.latent_size * vq_downsampling(model.vq)
    name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    precision = "bf16 autocast" if gpu else "fp32"
    print(
        f"device: {name}, {precision}; LDM {ldm} ({size} px); guidance {args.guidance}; torch {torch.__version__}"
    )
    memory = "peak GiB" if gpu else "peak RSS GiB"
    print(f"| device | LDM | batch | steps | images/s | s/batch | {memory} |")
    print("|---|---|---|---|---|---|---|")
    for batch in batches:
        for n in steps:
            row = measure(model, batch, n, args.guidance, args.repeats, device)
            print(
                f"| {'cuda' if gpu else 'cpu'} | {ldm} | {batch} | {n} | {row['images_s']:.3f} "
                f"| {row['s_batch']:.2f} | {row['peak_GiB']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
