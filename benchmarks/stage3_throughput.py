"""Stage-3 training throughput: samples/s of LDMFinetune optimizer steps, with random weights.

    python benchmarks/stage3_throughput.py                  # CPU: "small" LDM (64 px), tiny encoder, 3936 voxels
    python benchmarks/stage3_throughput.py                  # GPU: cin256-f4 (256 px), base encoder, 15728 voxels
    python benchmarks/stage3_throughput.py --ldm-config tiny --steps 3

Times whole optimizer steps of :class:`LDMFinetune` (``loss(batch)`` as ``training_step``: frozen VQ
encode, fMRI encoder + conditioner with 10% null conditions, one UNet forward at a random timestep,
epsilon MSE; backward; AdamW over the parameters the module leaves trainable (``stages.optim.adamw``:
fused on CUDA) = the fMRI encoder, the conditioner and the UNet's cross-attention + time-embedding
projection). The LDM is a random ``--ldm-config`` (``pretrained_ldm=None``) and the encoder a random
``--encoder-size`` one: speed does not depend on weight values.

Each step moves a host batch (random fMRI ``[b, V]``, random uint8 images ``[b, 3, S, S]`` at the LDM's
resolution S, pinned on CUDA) to the device and turns the images into float [0, 1], as the DataModule's
``on_after_batch_transfer`` does before ``LDMFinetune.encode_images``.

GPU: bf16 autocast (as ``precision: bf16-mixed``), timing between ``torch.cuda.synchronize`` calls, peak
memory = ``max_memory_allocated`` over the timed steps. CPU: fp32, peak memory = the process' peak RSS so
far (model included).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import resource
import time

import torch

from lightning_fcae.models.ldm import vq_downsampling
from lightning_fcae.stages.diffusion import LDMFinetune
from lightning_fcae.stages.optim import adamw


def build(ldm: str, num_voxels: int, encoder_size: str, device: torch.device) -> LDMFinetune:
    torch.manual_seed(0)
    module = LDMFinetune(num_voxels, pretrained_ldm=None, ldm_config=ldm, encoder_size=encoder_size)
    return module.to(device).train()  # train(): cond_drop on, the VQ stays in eval mode


def measure(
    module: LDMFinetune, batch: int, image_size: int, steps: int, warmup: int, device: torch.device
) -> dict:
    cuda = device.type == "cuda"
    optimizer = adamw(module, module.hparams.lr, module.hparams.weight_decay)
    g = torch.Generator().manual_seed(0)
    host = {
        "fmri": torch.randn(batch, module.hparams.num_voxels, generator=g),
        "image": torch.randint(0, 256, (batch, 3, image_size, image_size), generator=g, dtype=torch.uint8),
    }
    if cuda:
        host = {k: v.pin_memory() for k, v in host.items()}
    autocast = torch.autocast("cuda", torch.bfloat16) if cuda else contextlib.nullcontext()

    def step() -> torch.Tensor:
        data = {k: v.to(device, non_blocking=True) for k, v in host.items()}
        data["image"] = data["image"].float().div_(255)  # NSDDataModule.on_after_batch_transfer
        with autocast:
            loss = module.loss(data)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    assert torch.isfinite(loss), f"batch {batch}: loss is {loss}"
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {"samples_s": batch / seconds, "ms_step": 1e3 * seconds, "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--ldm-config", default=None, help="named LDM shape (default: cin256-f4 on GPU, small on CPU)"
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[16], help="one row each (paper: 16)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on GPU, 5 on CPU)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default: 5 on GPU, 1 on CPU)"
    )
    parser.add_argument(
        "--encoder-size", default=None, help="fMRI encoder (default: base on GPU, tiny on CPU)"
    )
    parser.add_argument(
        "--num-voxels", type=int, default=None, help="padded voxels (default: 15728 on GPU, 3936 on CPU)"
    )
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    ldm = args.ldm_config or ("cin256-f4" if gpu else "small")
    encoder_size = args.encoder_size or ("base" if gpu else "tiny")
    num_voxels = args.num_voxels or (15728 if gpu else 3936)
    steps = args.steps or (20 if gpu else 5)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)

    module = build(ldm, num_voxels, encoder_size, device)
    image_size = module.latent_size * vq_downsampling(module.vq)
    counts = {
        "encoder": sum(p.numel() for p in module.encoder.parameters() if p.requires_grad),
        "conditioner": sum(p.numel() for p in module.conditioner.parameters() if p.requires_grad),
        "unet": sum(p.numel() for p in module.unet.parameters() if p.requires_grad),
    }
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    precision = "bf16 autocast" if gpu else "fp32"
    print(
        f"device: {name}, {precision}; LDM {ldm} ({image_size} px, latents {module.latent_size}); encoder "
        f"{encoder_size}, {num_voxels} voxels; {warmup} warm-up + {steps} timed steps; torch {torch.__version__}"
    )
    print(
        f"parameters: {total / 1e6:.1f}M, trainable {trainable / 1e6:.2f}M ("
        + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items())
        + ")"
    )
    memory = "peak GiB" if gpu else "peak RSS GiB"
    print(f"| device | LDM | encoder | batch | samples/s | ms/step | {memory} |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batch:
        try:
            row = measure(module, batch, image_size, steps, warmup, device)
        except torch.OutOfMemoryError:
            row = None
        module.zero_grad(set_to_none=True)  # an OOM can leave gradients behind
        gc.collect()  # free the previous row's optimizer state
        if gpu:
            torch.cuda.empty_cache()
        if row is None:
            print(f"| cuda | {ldm} | {encoder_size} | {batch} | out of memory |")
            continue
        print(
            f"| {'cuda' if gpu else 'cpu'} | {ldm} | {encoder_size} | {batch} | {row['samples_s']:.2f} "
            f"| {row['ms_step']:.1f} | {row['peak']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
