"""Where does a stage-1 training step spend its GPU time? Prints the top kernels of a few steps.

python benchmarks/profile_stage1.py --model mae --size large --batch 128
"""

from __future__ import annotations

import argparse

import torch
from stage1_throughput import build, make_step
from torch.profiler import ProfilerActivity, profile

from lightning_fcae.stages.optim import adamw


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mae", choices=["mae", "fcae"])
    parser.add_argument("--size", default="large")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--voxels", type=int, default=15728)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--attention", default="auto", choices=["auto", "flash", "cudnn", "efficient"])
    args = parser.parse_args()
    device = torch.device("cuda")
    model, loss_fn = build(args.model, args.size, args.voxels, device, checkpointing=False)
    if not args.no_compile:
        model.compile()
    step = make_step(model, loss_fn, adamw(model, 1e-4, 0.05), "fast", device, args.attention)
    x = torch.randn(args.batch, args.voxels, device=device)
    for _ in range(4):
        step(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step(x)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
