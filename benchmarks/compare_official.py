#!/usr/bin/env python3
"""cinn-sr vs the official SRFlow code (andreas128/SRFlow), timed interleaved in one process.

    SRFLOW_CODE=/path/to/SRFlow/code python benchmarks/compare_official.py \
        --harness /path/to/official_bench.py --config small --out compare.json

The official model is built by the official timing harness (`--harness`, a script that
imports the official `code/` folder named by SRFLOW_CODE and builds its SRFlowModel; see
its docstring), ours by `SRFlow.from_preset("div2k-4x", ...)` with the same layout
(`small`: K = 4, 8 RRDB blocks, stacked blocks 1, 3, 5, 7; `full`: div2k-4x). Both get
the same data. Each measurement alternates official and ours (official, ours, official,
...), so load that changes over time affects both alike; the ratio `ours / official` of
the medians is the figure to read (below 1: ours is faster).

  train   one training step on a B x 3 x 160 x 160 batch: the official SRFlowModel
          (feed_data + optimize_parameters: NLL, backward, Adam) vs ours (NLL, backward, Adam)
  sample  n samples at temperature 0.9 of one S x S LR image: the official test.py way
          (get_sr once per sample) vs `model.sample(lr, n=n)`

Peak memory is not separable here (both models live in one process): use
benchmarks/bench.py and the official harness for it, one case per process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

OURS = {"small": ("div2k-4x", dict(K=4, n_rrdb=8, stack_blocks=(1, 3, 5, 7))),
        "full": ("div2k-4x", {})}


def log(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_harness(path: str):
    spec = importlib.util.spec_from_file_location("official_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alternate(variants: dict, runs: int, warmup: int, log=log) -> dict:
    """{name: step times} of the variants run in turn, `warmup` untimed rounds first."""
    times = {name: [] for name in variants}
    for i in range(warmup + runs):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
            log(f"{name}: {'warm-up' if i < warmup else 'run'} {dt:.2f} s")
    return times


def figures(times: dict) -> dict:
    out = {name: {"median_s": round(statistics.median(t), 4), "times_s": [round(x, 4) for x in t]}
           for name, t in times.items()}
    official, ours = (statistics.median(t) for t in times.values())
    out["ratio_ours_over_official"] = round(ours / official, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--harness", default=os.environ.get("OFFICIAL_BENCH", "official_bench.py"),
                   help="path of the official timing harness (official_bench.py)")
    p.add_argument("--config", choices=sorted(OURS), default="small")
    p.add_argument("--cases", default="train,sample", help="comma list of train, sample")
    p.add_argument("--batches", default="1,2", help="train batch sizes")
    p.add_argument("--sizes", default="64", help="LR sizes S for sampling")
    p.add_argument("--samples", default="1,10", help="sample counts n")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()

    harness = load_harness(args.harness)
    import torch

    from cinn_sr import SRFlow

    torch.set_num_threads(args.threads)
    h_args = harness.parse_args(["--config", args.config, "--threads", str(args.threads)])
    cfg = harness.resolve_config(h_args)
    base, overrides = OURS[args.config]
    report = {"bench": "benchmarks/compare_official.py", "config": args.config,
              "official_config": cfg, "ours": {"preset": base, "overrides": overrides},
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch": torch.__version__, "threads": torch.get_num_threads()},
              "load_average_start": [round(x, 2) for x in os.getloadavg()],
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "results": {}}
    scale = cfg["scale"]
    for case in args.cases.split(","):
        jobs = ([("train", int(b), None) for b in args.batches.split(",")] if case == "train"
                else [("sample", int(s), int(n)) for s in args.sizes.split(",")
                      for n in args.samples.split(",")])
        for kind, a, n in jobs:
            h_args.batch = a if kind == "train" else h_args.batch
            official, net, _ = harness.build_model(cfg, h_args)
            ours = SRFlow.from_preset(base, **overrides)
            if kind == "train":
                hr = harness.synthetic_images(a, 160, 1000)
                lr = harness.downscale(hr, scale)
                ours.initialize(lr, hr)
                ours.train()
                optimizer = torch.optim.Adam(ours.parameters(), lr=cfg["lr"], betas=(0.9, 0.99))
                step = {"n": 0}

                def official_step(official=official, lr=lr, hr=hr, step=step):
                    step["n"] += 1
                    official.feed_data({"LQ": lr, "GT": hr})
                    official.optimize_parameters(step["n"])

                def ours_step(ours=ours, lr=lr, hr=hr, optimizer=optimizer):
                    loss = ours.nll(lr, hr).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()

                times = alternate({"official": official_step, "ours": ours_step},
                                  args.runs, args.warmup)
                name = f"train:b{a}"
            else:
                harness.init_actnorm(official, net, cfg, h_args)
                hr = harness.synthetic_images(1, 64, 3000)
                ours.initialize(harness.downscale(hr, scale), hr)
                ours.eval()
                lr = harness.downscale(harness.synthetic_images(1, a * scale, 4000), scale)

                def official_sample(official=official, lr=lr, n=n):
                    for _ in range(n):
                        official.get_sr(lq=lr, heat=0.9)

                def ours_sample(ours=ours, lr=lr, n=n):
                    ours.sample(lr, 0.9, n=n)

                times = alternate({"official": official_sample, "ours": ours_sample},
                                  args.runs, args.warmup)
                name = f"sample:lr{a}:n{n}"
            report["results"][name] = figures(times)
            log(f"{name}: {json.dumps(report['results'][name])}")
            del official, net, ours
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        from cinn_sr.datasets.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
