"""Training throughput: optimizer steps per second and whether data loading keeps up.

    python benchmarks/bench_train.py [--preset tiny-4x] [--patch 32] [--batch 8] [--steps 20]
                                     [--workers 0 2] [--device auto] [--encoder-bf16]

Patches are the scikit-image photos packed at `--patch` (HR) into a temporary file. The
loader figure is batches per second through the same DataLoader the training loop builds
(seeded shard sampler, flips, pinned memory on CUDA); the step figure is one full training
step (dequantisation noise, encoder, flow NLL, backward, Adam) on batches already on the
device. When the loader delivers more batches per second than the step consumes, the
device never waits for HDF5 reads.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cinn_sr.datasets import sample_photo_paths
from cinn_sr.datasets.pack import pack_images
from cinn_sr.datasets.patch_dataset import PatchDataset
from cinn_sr.distributed import ShardedBatches, resolve_device
from cinn_sr.loop import FlippedPairs
from cinn_sr.model import SRFlow
from cinn_sr.train import FlowObjective


def loader_rate(path: Path, batch: int, workers: int, device: torch.device, n: int) -> float:
    """Batches per second delivered to `device` (after the first, which starts workers)."""
    patches = FlippedPairs(PatchDataset(path, augment=False))
    loader = DataLoader(
        patches, batch_sampler=ShardedBatches(len(patches), batch, seed=0),
        num_workers=workers, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
    data = iter(loader)
    next(data)
    start = time.perf_counter()
    for _ in range(n):
        hr, lr = next(data)
        hr.to(device, non_blocking=True), lr.to(device, non_blocking=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def step_rate(args, path: Path, device: torch.device) -> float:
    """Training steps per second on device-resident batches."""
    torch.manual_seed(0)
    model = SRFlow.from_preset(args.preset).to(device)
    objective = FlowObjective(model, "gaussian", args.encoder_bf16 and device.type == "cuda")
    patches = PatchDataset(path, augment=False)
    pairs = [patches[i % len(patches)] for i in range(args.batch)]
    hr = torch.stack([p[0] for p in pairs]).to(device)
    lr = torch.stack([p[1] for p in pairs]).to(device)
    model.initialize(lr, hr)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        objective(hr, lr).mean().backward()
        optimizer.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-4x")
    parser.add_argument("--patch", type=int, default=32, help="HR patch size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--encoder-bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    scale = SRFlow.from_preset(args.preset).config.scale
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "patches.h5"
        pack_images(
            [p for _, p in sample_photo_paths()], path, scale=scale, patch=args.patch,
            per_image=max(8, 4 * args.batch), progress=False,
        )
        print(f"{args.preset}, HR {args.patch}x{args.patch}, batch {args.batch}, "
              f"device {device}, torch threads {torch.get_num_threads()}")
        steps = step_rate(args, path, device)
        print(f"training step: {steps:.2f} steps/s ({1000 / steps:.1f} ms/step)")
        for workers in args.workers:
            rate = loader_rate(path, args.batch, workers, device, n=max(20, args.steps))
            print(f"loader, {workers} workers: {rate:.1f} batches/s "
                  f"({rate / steps:.1f}x what the steps consume)")


if __name__ == "__main__":
    main()
