"""Shard streaming throughput of NSDDataModule: samples/s with 0, 1 and 2 workers.

    python benchmarks/data_throughput.py --data data/synthetic-small [--epochs 1]

Two rows per worker count: voxels only (what stage 1 reads) and voxels + decoded images (stages 2
and 3). Each row streams one full training epoch (shuffle, repeats, normalisation, collation).
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from lightning_fcae.data.datamodule import NSDDataModule


def stream(data: str, workers: int, with_images: bool, batch_size: int, epochs: int) -> tuple[int, float]:
    dm = NSDDataModule(data, batch_size=batch_size, num_workers=workers, with_images=with_images)
    loader = dm.train_dataloader()
    samples, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            samples += batch["fmri"].shape[0]
    elapsed = time.perf_counter() - start
    # persistent workers: shut them down here, or the next row's forked workers inherit this pool
    # and fail an assertion when they finalise it at exit
    del loader
    gc.collect()
    return samples, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="data/synthetic-small")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs per row (the first includes worker start-up)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only collates; leave the cores to the workers
    print(
        f"# NSDDataModule streaming on {args.data}, batch {args.batch_size}, {args.epochs} epoch(s) per row"
    )
    print("| workers | images | samples | seconds | samples/s |")
    print("|---|---|---|---|---|")
    for workers in args.workers:
        for with_images in (False, True):
            samples, seconds = stream(args.data, workers, with_images, args.batch_size, args.epochs)
            print(
                f"| {workers} | {'yes' if with_images else 'no'} | {samples} | {seconds:.2f} | {samples / seconds:,.0f} |"
            )


if __name__ == "__main__":
    main()
