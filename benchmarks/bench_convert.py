"""Converting released SRFlow files: time and tensor/parameter counts of the three layouts.

    python benchmarks/bench_convert.py [--layout srflow-4x] [--repeat 3] [--threads 1]

Builds a random state dict in the official layout (key names and shapes recorded from the
reference code in tests/data/interop/official_keys.json; 1x1 matrices random rotations,
everything else Gaussian), saves it like a released `SRFlow_*.pth`, then times
`cinn-sr convert`'s work (`cinn_sr.interop.convert_file`: read with weights_only, infer
the config, build the model, map every tensor, decompose the 1x1 matrices into LU, write the
checkpoint) and `cinn_sr.load` on the same file. Prints the official tensor/value counts next
to the converted model's parameter count for every layout.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import cinn_sr
from cinn_sr import interop, srflow_keys

KEYS = Path(__file__).resolve().parent.parent / "tests" / "data" / "interop" / "official_keys.json"
LAYOUTS = ("srflow-4x", "srflow-8x", "srflow-celeba-8x")


def random_official_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("invconv.weight"):
            q, _ = torch.linalg.qr(torch.randn(shape, generator=gen, dtype=torch.float64))
            state[key] = q.float()
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.01
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="srflow-4x", choices=LAYOUTS, help="layout to time")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is shown)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keys = json.loads(KEYS.read_text())

    for layout in LAYOUTS:
        shapes = keys[layout]
        state = {k: torch.empty(s) for k, s in shapes.items()}
        values = sum(v.numel() for v in state.values())
        unused = sum(v.numel() for k, v in state.items() if k.startswith(srflow_keys.UNUSED_PREFIX))
        print(f"{layout}: {len(shapes)} tensors, {values:,} values in the official file; "
              f"{values - unused:,} used ({unused:,} in flowUpsamplerNet.f, dropped)")

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "SRFlow_random.pth", Path(tmp) / "converted.pt"
        torch.save(random_official_state(keys[args.layout]), src)
        size = src.stat().st_size / 2**20
        convert_times, load_times = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            line = interop.convert_file(src, out)
            convert_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            model = cinn_sr.load(src)
            load_times.append(time.perf_counter() - start)
        params = sum(p.numel() for p in model.parameters())
        print(line.replace(str(out), "converted.pt"))
        print(f"{args.layout} ({size:.0f} MiB, torch threads {torch.get_num_threads()}): "
              f"convert (read + map + LU + write) {min(convert_times):.2f} s, "
              f"cinn_sr.load {min(load_times):.2f} s (best of {args.repeat}); "
              f"model parameters {params:,}")


if __name__ == "__main__":
    main()
