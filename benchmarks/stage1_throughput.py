"""Stage-1 training throughput: samples/s, tokens/s, peak memory and MFU, two modes side by side.

    python benchmarks/stage1_throughput.py                       # GPU if present, else a small CPU run
    python benchmarks/stage1_throughput.py --sizes large --models mae fcae --batch 256

Modes:
  reference  fp32, eager, plain attention (SDPA's math backend materialises the attention matrix,
             as timm's Attention in the MinD-Vis code does), unfused AdamW.
  fast       bf16 autocast, flash attention, fused AdamW, torch.compile, no host syncs in the step.

MFU = model FLOPs per step (counted once with torch.utils.flop_counter, forward + backward) x steps/s
divided by the device's dense bf16 peak (both modes against the same peak, so they compare).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lightning_fcae.models import FCAE, MAE, fcae_loss, mae_loss, model_size
from lightning_fcae.stages.optim import adamw

# dense bf16 tensor-core peaks (TFLOP/s), by substring of torch.cuda.get_device_name()
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0, "3090": 71.0}


def device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak * 1e12 for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def build(kind: str, size: str, num_voxels: int, device: torch.device, checkpointing: bool):
    encoder, regressor, decoder = model_size(size)
    if kind == "fcae":
        model = FCAE(num_voxels, encoder, regressor, decoder, grad_checkpointing=checkpointing)
        return model.to(device), lambda out: fcae_loss(out, model.discretizer, 2.0)["loss"]
    model = MAE(num_voxels, encoder, decoder, grad_checkpointing=checkpointing)
    return model.to(device), lambda out: mae_loss(out)["loss"]


ATTENTION_BACKENDS = {
    "auto": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def make_step(model, loss_fn, optimizer, mode: str, device: torch.device, attention: str = "auto"):
    autocast = torch.autocast(device.type, torch.bfloat16) if mode == "fast" else contextlib.nullcontext()
    backend = SDPBackend.MATH if mode == "reference" else ATTENTION_BACKENDS[attention]

    def step(x: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(backend) if backend else contextlib.nullcontext(), autocast:
            loss = loss_fn(model(x, 0.75))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def measure(
    kind, size, mode, batch, num_voxels, device, steps, warmup, checkpointing, attention, compile_mode=None
) -> dict:
    torch.manual_seed(0)
    model, loss_fn = build(kind, size, num_voxels, device, checkpointing)
    if mode == "fast":
        model.compile(mode=compile_mode)
        optimizer = adamw(model, 1e-4, 0.05)  # fused on CUDA
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, foreach=False)
    step = make_step(model, loss_fn, optimizer, mode, device, attention)
    x = torch.randn(batch, num_voxels, device=device)
    flop_counter = FlopCounterMode(display=False)
    with flop_counter:
        step(x)
    flops = flop_counter.get_total_flops()
    for _ in range(warmup):
        step(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    assert torch.isfinite(loss), f"{kind}/{size}/{mode}: loss is {loss}"
    peak = device_peak(device)
    n_tokens = num_voxels // model.patch_size
    return {
        "model": kind,
        "size": size,
        "mode": mode if mode == "reference" else f"{mode}/{attention}",
        "batch": batch,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "samples_s": batch / seconds,
        "tokens_s": batch * n_tokens / seconds,
        "peak_GiB": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else float("nan"),
        "mfu_%": 100 * flops / seconds / peak if peak else float("nan"),
        "TFLOP_s": flops / seconds / 1e12,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["mae", "fcae"], choices=["mae", "fcae"])
    parser.add_argument(
        "--sizes", nargs="+", default=None, help="default: base large on GPU, tiny small on CPU"
    )
    parser.add_argument("--modes", nargs="+", default=["reference", "fast"], choices=["reference", "fast"])
    parser.add_argument(
        "--voxels",
        type=int,
        default=None,
        help="padded voxels (default: 15728 on GPU, the paper's 15725 padded; "
        "3936 on CPU, the small synthetic profile's)",
    )
    parser.add_argument(
        "--batch", type=int, nargs="+", default=None, help="one, or one per mode (e.g. 32 256)"
    )
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument(
        "--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs"
    )
    parser.add_argument(
        "--attention", default="auto", choices=sorted(ATTENTION_BACKENDS), help="fast mode's SDPA kernel"
    )
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    batches = args.batch or ([64, 256] if on_gpu else [2, 2])
    args.sizes = args.sizes or (["base", "large"] if on_gpu else ["tiny", "small"])
    args.voxels = args.voxels or (15728 if on_gpu else 3936)
    steps = args.steps or (20 if on_gpu else 2)
    warmup = args.warmup or (5 if on_gpu else 1)
    name = torch.cuda.get_device_name(device) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"# stage-1 throughput on {name}, torch {torch.__version__}, {args.voxels} voxels, {steps} timed steps"
    )
    columns = [
        "model",
        "size",
        "mode",
        "batch",
        "params_M",
        "samples_s",
        "tokens_s",
        "peak_GiB",
        "mfu_%",
        "TFLOP_s",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for kind in args.models:
        for size in args.sizes:
            for mode, batch in zip(args.modes, batches if len(batches) > 1 else batches * len(args.modes)):
                try:
                    row = measure(
                        kind,
                        size,
                        mode,
                        batch,
                        args.voxels,
                        device,
                        steps,
                        warmup,
                        args.checkpointing,
                        args.attention,
                        args.compile_mode,
                    )
                except torch.OutOfMemoryError:
                    print(f"| {kind} | {size} | {mode} | {batch} | out of memory |")
                    torch.cuda.empty_cache()
                    continue
                cells = [f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
                print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
