"""Time a new sample of an image already opened against the first one (`SRFlow.prepare`).

    python benchmarks/bench_resample.py [--size 128] [--threads 2] [--repeats 5]

The first sample of an LR image runs the encoder and every condition-only term of the flow
(the injectors' subnets, the couplings' condition convolutions); a `PreparedLR` keeps them,
so a new sample (a slider move, another seed, a re-drawn region) decodes only what depends
on the latents. Prints the median times of: a plain `model.sample`, the first sample with a
fresh `PreparedLR`, and a new sample with it, for the shipped small-4x on a photo crop.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import cinn_sr
from cinn_sr.datasets import imresize, sample_photos, to_tensor


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="LR side in pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = cinn_sr.load("small-4x")
    photo = dict(sample_photos())["astronaut"]
    hr = to_tensor(photo[: 4 * args.size, : 4 * args.size])[None]
    lr = imresize(hr, 1 / 4).clamp(0, 1)
    seeds = iter(range(10_000))

    def sample(cond=None):
        model.sample(lr, 0.7, generator=torch.Generator().manual_seed(next(seeds)), cond=cond)

    sample()  # warm-up
    plain, first, again = [], [], []
    for _ in range(args.repeats):
        plain.append(timed(sample))
        start = time.perf_counter()
        prepared = model.prepare(lr)
        sample(prepared)
        first.append(time.perf_counter() - start)
        again.append(statistics.median(timed(lambda p=prepared: sample(p)) for _ in range(3)))
    p, f, a = (statistics.median(x) for x in (plain, first, again))
    print(f"small-4x, {args.size}x{args.size} LR -> {4 * args.size}x{4 * args.size}, "
          f"{args.threads} threads, median of {args.repeats}:")
    print(f"  model.sample (no cache)          {p:6.3f} s")
    print(f"  prepare + first sample           {f:6.3f} s")
    print(f"  new sample of the prepared image {a:6.3f} s  ({a / f:.2f} x the first, "
          f"{a / p:.2f} x a plain sample)")


if __name__ == "__main__":
    main()
