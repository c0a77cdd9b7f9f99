"""Stage-2 training throughput: the CLIP feature cache against CLIP recomputed per batch, side by side.

    python benchmarks/stage2_throughput.py             # CPU: tiny encoder, fcae-clip-small, 3936 voxels
    python benchmarks/stage2_throughput.py             # GPU: base encoder, ViT-B-32 (224 px), 15728 voxels
    python benchmarks/stage2_throughput.py --encoder-size tiny --clip-model fcae-clip-tiny --num-voxels 496

Times whole optimizer steps of :class:`FCAEAlign` (``losses(batch, mask_ratio)`` as ``training_step``,
backward, AdamW over the trainable parameters (``stages.optim.adamw``: fused on CUDA), the temperature
clamp of ``on_train_batch_end``) with a random-init encoder, in two modes:

  cached  the batch carries ``clip_image_tokens [b, T, D]``, ``clip_image_embed [b, D]`` and
          ``clip_text_embed [b, D]`` (float32, as ``ClipFeatureLookup`` returns them; random values: the
          cache is a lookup, so the step's cost is that of reading them). No CLIP in the module.
  live    the batch carries ``image`` (uint8 ``[b, 3, H, W]``) and ``captions`` (1-3 per sample); the
          module's frozen CLIP (``clip_features="live"``, random weights) computes the image tokens, the image
          embedding and the caption embeddings every step.

Each step moves a host batch to the device and turns uint8 images into float [0, 1], as the DataModule's
``on_after_batch_transfer`` does, so both modes pay for what they carry. T and D are read from the CLIP
model (ViT-B-32: 50 x 512, fcae-clip-small: 65 x 512, fcae-clip-tiny: 17 x 512), the image side defaults
to the CLIP's input size (no resize; ``--image-size`` adds the resize to the live mode's cost).

GPU: bf16 autocast (as ``precision: bf16-mixed``), timing between ``torch.cuda.synchronize`` calls, peak
memory = ``max_memory_allocated`` over the timed steps. CPU: fp32; the memory column is the process' peak
RSS so far (the cached mode runs first, so the live row's figure is the larger of the two).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import resource
import time

import torch

from lightning_fcae.models.clip import load_clip
from lightning_fcae.stages.align import FCAEAlign
from lightning_fcae.stages.optim import adamw

WORDS = ["a", "man", "woman", "dog", "cat", "red", "blue", "green", "small", "large", "wooden", "table"]
WORDS += ["plate", "of", "food", "on", "the", "street", "with", "sitting", "next", "to", "two", "people"]
WORDS += ["bus", "train", "kitchen", "field", "sky", "grass", "window", "picture"]


def clip_shape(model: str) -> tuple[int, int, int]:
    """(T, D, image side) of an open_clip model, from a random-init instance."""
    clip = load_clip(model, None)
    return clip.num_tokens, clip.embed_dim, clip.image_size


def host_batch(
    mode: str, batch: int, num_voxels: int, tokens: int, dim: int, image_size: int, pin: bool
) -> dict:
    """One batch as the DataLoader hands it over (pinned on CUDA machines, as the DataModule does)."""
    g = torch.Generator().manual_seed(0)
    out = {"fmri": torch.randn(batch, num_voxels, generator=g)}
    if mode == "cached":
        out["clip_image_tokens"] = torch.randn(batch, tokens, dim, generator=g)
        out["clip_image_embed"] = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=-1)
        out["clip_text_embed"] = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=-1)
    else:
        out["image"] = torch.randint(
            0, 256, (batch, 3, image_size, image_size), generator=g, dtype=torch.uint8
        )
    if pin:
        out = {k: v.pin_memory() for k, v in out.items()}
    if mode == "live":
        counts = torch.randint(1, 4, (batch,), generator=g).tolist()
        lengths = torch.randint(6, 13, (sum(counts),), generator=g).tolist()
        words = iter(torch.randint(len(WORDS), (sum(lengths),), generator=g).tolist())
        captions = [" ".join(WORDS[next(words)] for _ in range(n)) for n in lengths]
        caption_iter = iter(captions)
        out["captions"] = [[next(caption_iter) for _ in range(c)] for c in counts]
    return out


def to_device(batch: dict, device: torch.device) -> dict:
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    if "image" in out:  # NSDDataModule.on_after_batch_transfer
        out["image"] = out["image"].float().div_(255)
    return out


def measure(mode: str, args, tokens: int, dim: int, image_size: int, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    module = FCAEAlign(
        args.num_voxels,
        encoder_ckpt=None,
        encoder_size=args.encoder_size,
        clip_tokens=tokens,
        clip_dim=dim,
        clip_model=args.clip_model if mode == "live" else None,
        clip_pretrained=None,
        clip_features="live",
    )
    module = module.to(device).train()
    optimizer = adamw(module, module.hparams.lr, module.hparams.weight_decay)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    batch = host_batch(mode, args.batch, args.num_voxels, tokens, dim, image_size, pin=cuda)
    autocast = torch.autocast("cuda", torch.bfloat16) if cuda else contextlib.nullcontext()

    def step() -> torch.Tensor:
        data = to_device(batch, device)
        with autocast:
            terms, _, _ = module.losses(data, module.hparams.mask_ratio)
        terms["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        module.on_train_batch_end(None, data, 0)  # clamps the temperature
        return terms["loss"].detach()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    assert torch.isfinite(loss), f"{mode}: loss is {loss}"
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {
        "trainable_M": trainable / 1e6,
        "samples_s": args.batch / seconds,
        "ms_step": 1e3 * seconds,
        "peak": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=16, help="paper: 16")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on GPU, 5 on CPU)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default: 5 on GPU, 1 on CPU)"
    )
    parser.add_argument(
        "--clip-model",
        default=None,
        help="open_clip config (default: ViT-B-32 on GPU, fcae-clip-small on CPU)",
    )
    parser.add_argument("--encoder-size", default=None, help="default: base on GPU, tiny on CPU")
    parser.add_argument(
        "--num-voxels", type=int, default=None, help="padded voxels (default: 15728 on GPU, 3936 on CPU)"
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="side of the live mode's images (default: the CLIP's)"
    )
    parser.add_argument("--modes", nargs="+", default=["cached", "live"], choices=["cached", "live"])
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    args.clip_model = args.clip_model or ("ViT-B-32" if gpu else "fcae-clip-small")
    args.encoder_size = args.encoder_size or ("base" if gpu else "tiny")
    args.num_voxels = args.num_voxels or (15728 if gpu else 3936)
    args.steps = args.steps or (20 if gpu else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)

    tokens, dim, clip_size = clip_shape(args.clip_model)
    image_size = args.image_size or clip_size
    name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    precision = "bf16 autocast" if gpu else "fp32"
    print(
        f"device: {name}, {precision}; encoder {args.encoder_size}, {args.num_voxels} voxels; CLIP "
        f"{args.clip_model} (T={tokens}, D={dim}, {image_size} px images); batch {args.batch}, "
        f"{args.warmup} warm-up + {args.steps} timed steps; torch {torch.__version__}"
    )
    memory = "peak GiB" if gpu else "peak RSS GiB"
    print(f"| mode | encoder | CLIP | batch | trainable M | samples/s | ms/step | {memory} |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for mode in args.modes:
        try:
            row = measure(mode, args, tokens, dim, image_size, device)
        except torch.OutOfMemoryError:
            row = None
        gc.collect()  # free the previous mode's module and optimizer state
        if gpu:
            torch.cuda.empty_cache()
        if row is None:
            print(f"| {mode} | {args.encoder_size} | {args.clip_model} | {args.batch} | out of memory |")
            continue
        rows[mode] = row
        clip = "cache" if mode == "cached" else f"live {args.clip_model}"
        print(
            f"| {mode} | {args.encoder_size} | {clip} | {args.batch} | {row['trainable_M']:.1f} "
            f"| {row['samples_s']:.2f} | {row['ms_step']:.1f} | {row['peak']:.2f} |",
            flush=True,
        )
    if len(rows) == 2:
        print(f"speed-up of the cache: {rows['cached']['samples_s'] / rows['live']['samples_s']:.2f}x")


if __name__ == "__main__":
    main()
