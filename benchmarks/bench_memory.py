"""Training-step memory and time: the official SRFlow code, cinn-sr standard, cinn-sr
memory-saving (`train --memory-saving`), side by side in one run.

    SRFLOW_CODE=/path/to/SRFlow/code python benchmarks/bench_memory.py \
        --harness /path/to/official_bench.py [--batches 2,12] [--ks 4,8,16] [--out FILE]

One training step (NLL of a B x 3 x 160 x 160 HR / 40 x 40 LR batch, backward, Adam) of
div2k-4x, the encoder trained (as the official code does): peak RSS and the median step time
for each batch of `--batches` and each of the three codes; then the peak RSS of both cinn-sr
modes for each K of `--ks` at batch `--k-batch`. Every configuration runs in a fresh process
(the official one through its harness, `--config full --phases train`), so each peak RSS is
its own; since the load of a shared machine changes between processes, the two cinn-sr
modes' step times are also taken alternated in one process (`--interleaved B`), the
figure to read for their ratio. `--no-official` leaves the official code out. Prints one
JSON report with the ratios the memory-saving option is judged by: peak RSS against the
official code's, and step time against cinn-sr standard's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench import current_rss_mb, load_average, machine, median, peak_rss_mb, write_atomic

MODES = ("standard", "memory_saving")


def log(message: str) -> None:
    print(f"[bench_memory {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_ours(job: dict) -> dict:
    """One cinn-sr configuration, in this (child) process."""
    import torch
    from bench import build_model, timed, train_step_fn

    from cinn_sr.memory import set_memory_saving

    torch.set_num_threads(job["threads"])
    device = torch.device("cpu")
    model = build_model("div2k-4x", device, K=job["K"])
    set_memory_saving(model, job["mode"] == "memory_saving")
    step = train_step_fn(model, job["batch"], job["hr"], device)
    rss_before = current_rss_mb()
    times = timed(step, job["runs"], job["warmup"], device)
    return {"median_s_per_step": round(median(times), 3), "times_s": [round(t, 3) for t in times],
            "rss_before_mb": rss_before, "peak_rss_mb": peak_rss_mb(),
            "kept_inputs": sorted(model.memory_saving.keep) if model.memory_saving else None}


def run_interleaved(job: dict) -> dict:
    """Step times of both cinn-sr modes on one model, alternated (load that changes over
    time affects all alike), with the encoder trained and frozen; and the floor of any
    step that recomputes activations: 1 + (a no-grad pass of the flow, and of the encoder
    trunk where it trains) / the standard step."""
    import torch
    from bench import build_model, interleaved, train_step_fn

    from cinn_sr.blocks import MemorySavingFlow

    torch.set_num_threads(job["threads"])
    device = torch.device("cpu")
    model = build_model("div2k-4x", device, K=job["K"])
    step = train_step_fn(model, job["batch"], job["hr"], device)
    runner = MemorySavingFlow(model.flow)
    lr, hr = step.batch
    with torch.no_grad():
        cond = model.condition(lr)

    def mode(on: bool, frozen: bool):
        def run():
            model.memory_saving, model.encoder.checkpoint_trunk = (runner if on else None), on
            for p in model.encoder.parameters():
                p.requires_grad_(not frozen)
            step()
        return run

    @torch.no_grad()
    def flow_pass():
        model.nll(lr, hr, cond=cond)

    @torch.no_grad()
    def trunk_pass():
        model.encoder.RRDB_trunk(model.encoder.conv_first(lr))

    variants = {f"{m}{suffix}": mode(m == "memory_saving", frozen)
                for frozen, suffix in ((False, ""), (True, "_frozen_encoder")) for m in MODES}
    times = interleaved({**variants, "flow_pass": flow_pass, "trunk_pass": trunk_pass},
                        job["runs"], job["warmup"], device)
    med = {name: median(t) for name, t in times.items()}
    result = {name: {"median_s": round(med[name], 3), "times_s": [round(x, 3) for x in t]}
              for name, t in times.items()}
    for suffix, recomputed in (("", med["flow_pass"] + med["trunk_pass"]),
                               ("_frozen_encoder", med["flow_pass"])):
        result[f"memory_saving_time_vs_standard{suffix}"] = round(
            med[f"memory_saving{suffix}"] / med[f"standard{suffix}"], 3)
        result[f"recompute_floor_vs_standard{suffix}"] = round(
            1 + recomputed / med[f"standard{suffix}"], 3)
    result["kept_inputs"] = sorted(runner.keep)
    return result


def child(args, job: dict) -> dict:
    fd, path = tempfile.mkstemp(suffix=".json", prefix="bench_memory_")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--_job", json.dumps(job), "--_result",
           path]
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    try:
        if done.returncode:
            return {"error": (done.stderr.strip().splitlines() or ["exit"])[-1]}
        with open(path) as f:
            return json.load(f)
    finally:
        os.unlink(path)


def run_official(args, batch: int) -> dict:
    cmd = [sys.executable, args.harness, "--config", "full", "--phases", "train", "--batch",
           str(batch), "--hr", str(args.hr), "--runs", str(args.runs), "--warmup",
           str(args.warmup), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["exit"])[-1]}
    train = json.loads(done.stdout)["results"]["train"]
    return {"median_s_per_step": train["median_s_per_step"], "times_s": train["times_s"],
            "peak_rss_mb": train["peak_rss_mb"]}


def measure(args, name: str, fn) -> dict:
    log(f"{name} ...")
    t0 = time.perf_counter()
    result = fn()
    result["process_wall_s"] = round(time.perf_counter() - t0, 1)
    log(f"{name}: {json.dumps({k: v for k, v in result.items() if k != 'times_s'})}")
    return result


def ratio(a: dict, b: dict, key: str) -> float | None:
    return round(a[key] / b[key], 3) if key in a and key in b else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--harness", help="the official timing harness (official_bench.py)")
    p.add_argument("--no-official", action="store_true", help="leave the official code out")
    p.add_argument("--batches", default="2,12", help="batches of the side-by-side part")
    p.add_argument("--ks", default="4,8,16", help="K values of the memory-vs-depth part")
    p.add_argument("--k-batch", type=int, default=2, help="batch of the memory-vs-depth part")
    p.add_argument("--interleaved", type=int, default=2,
                   help="batch of the step-time comparison of both cinn-sr modes alternated "
                   "in one process (0: none)")
    p.add_argument("--hr", type=int, default=160, help="HR patch size (LR = HR / 4)")
    p.add_argument("--runs", type=int, default=2, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--out", help="also write the JSON report to this file")
    p.add_argument("--_job", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._job:
        with open(args._result, "w") as f:
            job = json.loads(args._job)
            json.dump((run_interleaved if job["mode"] == "interleaved" else run_ours)(job), f)
        return
    if not args.no_official and not args.harness:
        p.error("--harness is required (or --no-official)")
    report = {"bench": "benchmarks/bench_memory.py", "argv": sys.argv[1:], "machine": machine(),
              "load_average_start": load_average(),
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "batches": {}, "depth": {}}
    base = {"hr": args.hr, "runs": args.runs, "warmup": args.warmup, "threads": args.threads}
    for batch in (int(b) for b in args.batches.split(",") if b):
        row = {}
        if not args.no_official:
            row["official"] = measure(args, f"official B={batch}",
                                      lambda batch=batch: run_official(args, batch))
        for mode in MODES:
            job = {**base, "batch": batch, "K": 16, "mode": mode}
            row[mode] = measure(args, f"{mode} B={batch}", lambda job=job: child(args, job))
        row["memory_saving_time_vs_standard"] = ratio(row["memory_saving"], row["standard"],
                                                      "median_s_per_step")
        if "official" in row:
            row["memory_saving_rss_vs_official"] = ratio(row["memory_saving"], row["official"],
                                                         "peak_rss_mb")
            row["standard_rss_vs_official"] = ratio(row["standard"], row["official"],
                                                    "peak_rss_mb")
            row["standard_time_vs_official"] = ratio(row["standard"], row["official"],
                                                     "median_s_per_step")
        report["batches"][str(batch)] = row
        if args.out:
            write_atomic(args.out, json.dumps(report, indent=1))
    for k in (int(v) for v in args.ks.split(",") if v):
        row = {}
        for mode in MODES:
            done = report["batches"].get(str(args.k_batch), {}).get(mode) if k == 16 else None
            job = {**base, "batch": args.k_batch, "K": k, "mode": mode}
            row[mode] = done or measure(args, f"{mode} K={k}", lambda job=job: child(args, job))
        report["depth"][str(k)] = {mode: row[mode].get("peak_rss_mb") for mode in MODES}
        if args.out:
            write_atomic(args.out, json.dumps(report, indent=1))
    if args.interleaved:
        job = {**base, "batch": args.interleaved, "K": 16, "mode": "interleaved"}
        report["interleaved"] = measure(args, f"interleaved B={args.interleaved}",
                                        lambda: child(args, job))
    report["load_average_end"] = load_average()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        write_atomic(args.out, text)


if __name__ == "__main__":
    main()
