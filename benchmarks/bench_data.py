"""Data pipeline figures: packing rate, pack peak memory for 1x vs 4x images, read rate.

    python benchmarks/bench_data.py [--repeat 4] [--workers 2] [--compression gzip]

Packing runs in a child process per size, which reports its own peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``): if pack streams image by image, the peak
is the same for 1x and 4x the images. The input is the nine scikit-image photos (4.8 MP),
repeated under new names for the larger set. Reading: ``PatchDataset`` (augment on) through a
DataLoader, 160 x 160 patches, batch 12.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cinn_sr.datasets import PatchDataset, imresize, sample_photo_paths

CHILD = """
import json, resource, sys, time
from cinn_sr.datasets import pack_images
folder, out, compression = sys.argv[1:4]
start = time.perf_counter()
summary = pack_images([folder], out, compression=compression, progress=False)
seconds = time.perf_counter() - start
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"images": summary.images, "patches": summary.patches,
                  "seconds": seconds, "peak_mib": peak_mib}))
"""


def make_folder(root: Path, repeat: int) -> Path:
    folder = root / f"images_x{repeat}"
    folder.mkdir()
    for copy in range(repeat):
        for name, path in sample_photo_paths():
            shutil.copy(path, folder / f"{name}_{copy}{path.suffix}")
    return folder


def pack_in_child(folder: Path, out: Path, compression: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(out), compression],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def read_rate(path: Path, workers: int, batches: int, batch_size: int = 12) -> float:
    dataset = PatchDataset(path, augment=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    count, start = 0, None
    while count < batches * batch_size:
        for index, (hr, _) in enumerate(loader):
            if index == 0 and start is None:
                start = time.perf_counter()  # skip worker start-up and the first batch
                continue
            count += hr.shape[0]
            if count >= batches * batch_size:
                break
    return count / (time.perf_counter() - start)


def imresize_seconds(repeats: int = 3) -> float:
    image = torch.rand(1, 3, 1356, 2040)
    imresize(image, 1 / 4)
    start = time.perf_counter()
    for _ in range(repeats):
        imresize(image, 1 / 4)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=4, help="size of the larger set (x photos)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for reading")
    parser.add_argument("--batches", type=int, default=60, help="batches timed when reading")
    parser.add_argument("--compression", choices=["gzip", "lzf"], default="gzip")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        runs = {}
        for repeat in (1, args.repeat):
            folder = make_folder(root, repeat)
            out = root / f"patches_x{repeat}.h5"
            runs[repeat] = pack_in_child(folder, out, args.compression)
            run = runs[repeat]
            size_mib = out.stat().st_size / 2**20
            print(
                f"pack x{repeat}: {run['images']} images -> {run['patches']} patches (160/40, x4) "
                f"in {run['seconds']:.1f} s = {run['images'] / run['seconds']:.2f} images/s, "
                f"{run['patches'] / run['seconds']:.0f} patches/s; "
                f"peak RSS {run['peak_mib']:.0f} MiB; "
                f"file {size_mib:.1f} MiB ({args.compression})"
            )
        growth = runs[args.repeat]["peak_mib"] / runs[1]["peak_mib"]
        print(f"peak memory x{args.repeat} / x1 images: {growth:.2f}")
        largest = root / f"patches_x{args.repeat}.h5"
        for workers in sorted({0, args.workers}):
            rate = read_rate(largest, workers, args.batches)
            print(f"PatchDataset read, {workers} workers, batch 12, augment: {rate:.0f} patches/s")
    print(f"imresize 2040x1356 -> 510x339 (float32, CPU): {imresize_seconds() * 1000:.0f} ms")


if __name__ == "__main__":
    main()
