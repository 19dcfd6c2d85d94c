#!/usr/bin/env python3
"""One training step, side by side in one process: the official SRFlow code vs cinn-sr.

    SRFLOW_CODE=/path/to/SRFlow/code python benchmarks/bench_step.py \
        --harness /path/to/official_bench.py [--batches 2,12] [--runs 3] [--out step.json]

Variants, alternated in every round (official, plain, fast, fast-frozen, official, ...), so
load that changes over time affects all alike; the figures are medians:

  official     the official SRFlowModel (harness: feed_data + optimize_parameters), encoder
               trained
  plain        cinn-sr with the flow's condition convolutions at the condition's resolution
               (the blocks' `upsampled` option off: the code before it), encoder trained
  fast         cinn-sr as built (the stacked trunk channels of level 1's condition convolved
               at the LR resolution, `cinn_sr.blocks.upsampled`), encoder trained
  fast-frozen  the same with the encoder frozen (its parameters need no gradient)

Every cinn-sr step is NLL + backward + Adam on one div2k-4x model, the variant switched
before each step; the official model is the harness's, with the same batch (synthetic
160 x 160 HR images and their 4x bicubic LR). After the timings, one more step of each
variant is counted in multiply-adds (`multiply_adds_g`, forward and backward).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from compare_official import alternate, load_harness


def log(message: str) -> None:
    print(f"[bench_step {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ours_steps(model, lr, hr, torch) -> dict:
    """{variant: step function} for one cinn-sr model, each switching the model first."""
    from cinn_sr.loop import adam

    optimizer = adam(model.parameters(), lr=2.5e-4, betas=(0.9, 0.99))
    built = {m: m.upsampled for m in model.flow.modules() if hasattr(m, "upsampled")}

    def use(fast: bool, frozen: bool) -> None:
        for block, upsampled in built.items():
            block.upsampled = upsampled if fast else None
        for p in model.encoder.parameters():
            p.requires_grad_(not frozen)

    def variant(fast: bool, frozen: bool):
        def step() -> None:
            use(fast, frozen)
            optimizer.zero_grad(set_to_none=True)
            model.nll(lr, hr).mean().backward()
            optimizer.step()
        return step

    return {"plain": variant(False, False), "fast": variant(True, False),
            "fast-frozen": variant(True, True)}


def multiply_adds(step) -> float:
    """Multiply-adds (G) of one call of `step`, forward and backward (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return round(counter.get_total_flops() / 2e9, 1)


def figures(times: dict) -> dict:
    med = {name: statistics.median(t) for name, t in times.items()}
    out = {name: {"median_s": round(med[name], 3), "times_s": [round(x, 3) for x in t]}
           for name, t in times.items()}
    out["speedup_over_official"] = {name: round(med["official"] / med[name], 3)
                                    for name in med if name != "official"}
    out["speedup_fast_over_plain"] = round(med["plain"] / med["fast"], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--harness", default=os.environ.get("OFFICIAL_BENCH", "official_bench.py"),
                   help="path of the official timing harness (official_bench.py)")
    p.add_argument("--batches", default="2", help="comma list of batch sizes")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()

    harness = load_harness(args.harness)
    import torch

    from cinn_sr import SRFlow

    torch.set_num_threads(args.threads)
    h_args = harness.parse_args(["--config", "full", "--threads", str(args.threads)])
    cfg = harness.resolve_config(h_args)
    report = {"bench": "benchmarks/bench_step.py", "preset": "div2k-4x", "hr": 160,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch": torch.__version__, "threads": torch.get_num_threads()},
              "load_average_start": [round(x, 2) for x in os.getloadavg()],
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "results": {}}
    for batch in (int(b) for b in args.batches.split(",")):
        h_args.batch = batch
        official, _, _ = harness.build_model(cfg, h_args)
        hr = harness.synthetic_images(batch, 160, 1000)
        lr = harness.downscale(hr, cfg["scale"])
        model = SRFlow.from_preset("div2k-4x")
        model.initialize(lr, hr)
        model.train()
        count = {"n": 0}

        def official_step(official=official, lr=lr, hr=hr, count=count):
            count["n"] += 1
            official.feed_data({"LQ": lr, "GT": hr})
            official.optimize_parameters(count["n"])

        variants = {"official": official_step, **ours_steps(model, lr, hr, torch)}
        result = figures(alternate(variants, args.runs, args.warmup, log))
        result["multiply_adds_g"] = {name: multiply_adds(step) for name, step in variants.items()}
        report["results"][f"train:b{batch}"] = result
        log(json.dumps(report["results"][f"train:b{batch}"]))
        del official, model
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        from cinn_sr.datasets.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
