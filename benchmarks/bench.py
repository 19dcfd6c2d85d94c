#!/usr/bin/env python3
"""Speed and memory benchmarks of cinn-sr on the machine at hand; prints one JSON report.

    python benchmarks/bench.py --quick            # tiny presets, about a minute
    python benchmarks/bench.py                    # "small": the official harness's small config
    python benchmarks/bench.py --full             # div2k-4x figures (~15 min on one idle core)
    python benchmarks/bench.py --cases sample,naive --sizes 128 --out bench.json

Cases (`--cases`, comma list; default all but `compile`):

  train     training step (NLL forward + backward + Adam step), per preset and batch size
  sample    `model.sample` of one LR image per size at n = 1 and n = 10 samples
  tiled     `cinn_sr.sampling.super_resolve` by tiles of one LR image per tiled size
  invconv   training step and n = 1 sampling with LU vs full-matrix 1x1 convolutions
  naive     sampling n images of one LR: ours (encoder and condition-only terms once) vs the
            condition repeated n times vs the encoder run once per sample (the reference's
            test.py); also n = 1 for the n = 10 / n = 1 ratio
  hrbranch  the encoder's conditions vs the conditions plus the unused HR-resolution ESRGAN
            tail (HRconv, conv_last) that the reference code computes on every call
  inference sampling under torch.inference_mode vs no_grad vs autograd recording
  fusion    at level 1, the first layers of all 2K condition-only convolutions as 2K convs
            vs one wide convolution (a prototype: not what the model runs)
  layout    the encoder in contiguous vs channels-last memory format (CPU)
  compile   the flow eager vs `cinn_sr.fastpath.compile_flow` (training step and sampling);
            compilation time is reported separately

Every case runs in its own child process, so its peak memory (peak RSS, from
resource.getrusage; on CUDA also torch.cuda.max_memory_allocated) is its own; the parent
never imports torch. Times are medians of `--runs` runs after `--warmup` untimed ones
(the tiled case: one run without warm-up in the default and --full profiles, unless
--runs is given). The comparison cases use the smallest of `--sizes`.
Comparison cases (invconv, naive, hrbranch, inference, fusion, layout, compile) run their
variants interleaved in one process, so a ratio is not skewed by load that changes over
time; their peak memory is that of the whole case. `targets` gives the ratios the
performance issue asks for, each taken from one case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROFILES = {
    # tiny presets: exercises every case in about a minute
    "quick": dict(
        presets=["tiny-4x", "tiny-8x"], batches=[1, 4], hr=160, preset="tiny-4x",
        sizes=[32, 64], samples=[1, 10], tiled=[128], tile=48, overlap=8,
        runs=3, warmup=1, tiled_runs=3,
    ),
    # the official harness's "small" config (official_bench.py --config small):
    # 4x, L = 3, K = 4, 8 RRDB blocks, stacked blocks 1, 3, 5, 7, hidden 64
    "small": dict(
        presets=["small"], batches=[1, 2], hr=160, preset="small",
        sizes=[64, 128], samples=[1, 10], tiled=[256], tile=96, overlap=16,
        runs=3, warmup=1, tiled_runs=1,
    ),
    # the paper's 4x model
    "full": dict(
        presets=["div2k-4x"], batches=[1, 2], hr=160, preset="div2k-4x",
        sizes=[64, 128], samples=[1, 10], tiled=[256], tile=96, overlap=16,
        runs=3, warmup=1, tiled_runs=1,
    ),
}

EXTRA_PRESETS = {"small": ("div2k-4x", dict(K=4, n_rrdb=8, stack_blocks=(1, 3, 5, 7)))}

DEFAULT_CASES = ["train", "sample", "tiled", "invconv", "naive", "hrbranch", "inference",
                 "fusion", "layout"]
ALL_CASES = DEFAULT_CASES + ["compile"]


# ---- helpers used by the child processes -------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux: ru_maxrss is in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def median(values: list[float]) -> float:
    s = sorted(values)
    k = len(s)
    return s[k // 2] if k % 2 else 0.5 * (s[k // 2 - 1] + s[k // 2])


def timed(fn, runs: int, warmup: int, device) -> list[float]:
    """Wall times of `runs` calls of fn() after `warmup` untimed ones."""
    import torch

    times = []
    for i in range(warmup + runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def interleaved(variants: dict, runs: int, warmup: int, device) -> dict[str, list[float]]:
    """Times of each variant's fn(), the variants run in turn (A, B, A, B, ...)."""
    times = {name: [] for name in variants}
    for i in range(warmup + runs):
        for name, fn in variants.items():
            t = timed(fn, 1, 0, device)[0]
            if i >= warmup:
                times[name].append(t)
    return times


def summary(times: list[float]) -> dict:
    return {"median_s": round(median(times), 4), "times_s": [round(t, 4) for t in times]}


def build_model(name: str, device, **overrides):
    """A model of the preset `name` (or the "small" config), ActNorms initialised."""
    import torch

    from cinn_sr import SRFlow

    base, extra = EXTRA_PRESETS.get(name, (name, {}))
    model = SRFlow.from_preset(base, **{**extra, **overrides}).to(device)
    s, m = model.config.scale, model.config.lr_multiple
    g = torch.Generator().manual_seed(0)
    lr = synthetic(2, 4 * m, g).to(device)
    hr = synthetic(2, 4 * m * s, g).to(device)
    model.initialize(lr, hr)
    return model.eval()


def synthetic(batch: int, size: int, generator):
    """Smooth random RGB images in [0, 1] with some texture (speed does not depend on it)."""
    import torch
    import torch.nn.functional as F

    low = torch.rand(batch, 3, max(2, size // 8), max(2, size // 8), generator=generator)
    img = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (img + 0.05 * torch.rand(batch, 3, size, size, generator=generator)).clamp(0, 1)


def train_step_fn(model, batch: int, hr_size: int, device):
    """One training step closure: Gaussian-dequantised NLL, backward, the training loop's
    Adam step; its `batch` is the (lr, hr) pair it trains on."""
    import torch

    from cinn_sr.config import GAUSSIAN_NOISE_SIGMA
    from cinn_sr.loop import adam

    g = torch.Generator().manual_seed(1)
    hr = synthetic(batch, hr_size, g).to(device)
    lr = torch.nn.functional.interpolate(hr, scale_factor=1 / model.config.scale,
                                         mode="bicubic", antialias=True).clamp(0, 1)
    optimizer = adam(model.parameters(), lr=2.5e-4, betas=(0.9, 0.99))
    model.train()

    def step():  # the loop's order: the last step's gradients are gone before the forward
        optimizer.zero_grad(set_to_none=True)
        model.nll(lr, hr + torch.randn_like(hr) * GAUSSIAN_NOISE_SIGMA).mean().backward()
        optimizer.step()

    step.batch = lr, hr

    return step


def lr_image(size: int, device):
    import torch

    return synthetic(1, size, torch.Generator().manual_seed(2)).to(device)


# ---- the cases ---------------------------------------------------------------------------


def case_train(job, device):
    model = build_model(job["preset"], device, **job.get("overrides", {}))
    step = train_step_fn(model, job["batch"], job["hr"], device)
    rss_before = current_rss_mb()
    times = timed(step, job["runs"], job["warmup"], device)
    return dict(summary(times), s_per_image=round(median(times) / job["batch"], 4),
                params=sum(p.numel() for p in model.parameters()), rss_before_mb=rss_before)


def case_sample(job, device):
    import torch

    model = build_model(job["preset"], device)
    lr = lr_image(job["size"], device)
    g = torch.Generator(device=device).manual_seed(3)
    rss_before = current_rss_mb()
    times = timed(lambda: model.sample(lr, 0.9, n=job["n"], generator=g), job["runs"],
                  job["warmup"], device)
    return dict(summary(times), s_per_sample=round(median(times) / job["n"], 4),
                rss_before_mb=rss_before)


def case_tiled(job, device):
    import torch

    from cinn_sr.sampling import super_resolve

    model = build_model(job["preset"], device)
    lr = lr_image(job["size"], torch.device("cpu"))
    rss_before = current_rss_mb()
    out = {}

    def run():
        g = torch.Generator().manual_seed(4)
        out["sr"] = super_resolve(model, lr, (0.9,), 1, g, tile=job["tile"],
                                  overlap=job["overlap"])

    times = timed(run, job["runs"], job["warmup"], device)
    shape = list(out["sr"][0.9].shape)
    return dict(summary(times), tile=job["tile"], overlap=job["overlap"], sr_shape=shape,
                rss_before_mb=rss_before)


def case_invconv(job, device):
    import torch

    models = {kind: build_model(job["preset"], device, invconv=kind) for kind in ("lu", "full")}
    steps = {f"train_{k}": train_step_fn(m, job["batch"], job["hr"], device)
             for k, m in models.items()}
    times = interleaved(steps, job["runs"], job["warmup"], device)
    lr = lr_image(job["size"], device)
    for m in models.values():
        m.eval()
    samplers = {f"sample_{k}": (lambda m=m: m.sample(lr, 0.9, n=1)) for k, m in models.items()}
    times.update(interleaved(samplers, job["runs"], job["warmup"], device))
    with torch.no_grad():
        flow_only = {}
        for kind, model in models.items():
            convs = [mod for mod in model.flow.modules() if type(mod).__name__ == "InvConv1x1"]
            flow_only[f"invconv_layers_fwd_bwd_{kind}"] = convs
    layer_times = {}
    for name, convs in flow_only.items():
        def fwd_bwd(convs=convs):
            total = 0
            for conv in convs:
                total = total + conv.log_abs_det() + conv.weight_matrix().sum()
            total.backward()

        def rev(convs=convs):
            for conv in convs:
                conv.inverse_matrix()

        layer_times[name] = fwd_bwd
        layer_times[name.replace("fwd_bwd", "inverse")] = rev
    times.update(interleaved(layer_times, job["runs"], job["warmup"], device))
    result = {k: summary(v) for k, v in times.items()}
    result["ratio_train_lu_over_full"] = round(
        median(times["train_lu"]) / median(times["train_full"]), 3)
    result["ratio_sample_lu_over_full"] = round(
        median(times["sample_lu"]) / median(times["sample_full"]), 3)
    result["batch"], result["hr"], result["sample_size"] = job["batch"], job["hr"], job["size"]
    return result


def case_naive(job, device):
    import torch

    model = build_model(job["preset"], device)
    lr = lr_image(job["size"], device)
    n = job["n"]
    s = model.config.scale
    shapes = model.latent_shapes(lr.shape[-2] * s, lr.shape[-1] * s)

    def latents(batch):
        g = torch.Generator(device=device).manual_seed(5)
        return [torch.randn(batch, *sh, generator=g, device=device) * 0.9 for sh in shapes]

    def ours_n():
        model.sample(lr, 0.9, n=n)

    def ours_1():
        model.sample(lr, 0.9, n=1)

    def condition_repeated():
        with torch.inference_mode():
            cond = [c.repeat_interleave(n, dim=0) for c in model.condition(lr)]
            model.decode(lr.repeat_interleave(n, dim=0), latents(n), cond=cond)

    def encoder_per_sample():
        for _ in range(n):
            model.sample(lr, 0.9, n=1)

    with torch.inference_mode():
        cond = model.condition(lr)
        z = latents(n)
        a = model.decode(lr, z, cond=cond)
        b = model.decode(lr.repeat_interleave(n, 0), z,
                         cond=[c.repeat_interleave(n, 0) for c in cond])
        max_diff = float((a - b).abs().max())
    times = interleaved({f"ours_n{n}": ours_n, "ours_n1": ours_1,
                         f"condition_repeated_n{n}": condition_repeated,
                         f"encoder_per_sample_n{n}": encoder_per_sample},
                        job["runs"], job["warmup"], device)
    result = {k: summary(v) for k, v in times.items()}
    m = {k: median(v) for k, v in times.items()}
    result.update(
        size=job["size"], n=n,
        ratio_ours_n_over_n1=round(m[f"ours_n{n}"] / m["ours_n1"], 3),
        speedup_vs_condition_repeated=round(m[f"condition_repeated_n{n}"] / m[f"ours_n{n}"], 3),
        speedup_vs_encoder_per_sample=round(m[f"encoder_per_sample_n{n}"] / m[f"ours_n{n}"], 3),
        max_abs_diff_ours_vs_repeated=max_diff,
    )
    return result


def case_hrbranch(job, device):
    import torch
    import torch.nn.functional as F

    model = build_model(job["preset"], device)
    enc, config = model.encoder, model.config
    lr = lr_image(job["size"], device)
    used = max(0, int(max(config.level_factors)).bit_length() - 1)
    g = torch.Generator().manual_seed(7)
    feature = torch.randn(1, config.nf, job["size"] << used, job["size"] << used,
                          generator=g).to(device)

    def conditions():
        with torch.inference_mode():
            model.condition(lr)

    def hr_tail():
        """What the reference adds: the remaining upconvs, HRconv and conv_last at HR size."""
        with torch.inference_mode():
            fea = feature
            for i in range(used + 1, config.n_up + 1):
                fea = F.leaky_relu(getattr(enc, f"upconv{i}")(
                    F.interpolate(fea, scale_factor=2, mode="nearest")), 0.2)
            enc.conv_last(F.leaky_relu(enc.HRconv(fea), 0.2))

    times = interleaved({"ours_conditions": conditions, "unused_hr_tail": hr_tail},
                        job["runs"], job["warmup"], device)
    sample_times = timed(lambda: model.sample(lr, 0.9, n=1), max(1, job["runs"] - 1), 0, device)
    result = {k: summary(v) for k, v in times.items()}
    tail, sample = median(times["unused_hr_tail"]), median(sample_times)
    result.update(size=job["size"], upconvs_used=used, sample_n1=summary(sample_times),
                  reference_style_sample_estimate_s=round(sample + tail, 4),
                  hr_tail_fraction_of_sample=round(tail / sample, 3))
    return result


def case_inference(job, device):
    import torch

    model = build_model(job["preset"], device)
    lr = lr_image(job["size"], device)
    s = model.config.scale
    shapes = model.latent_shapes(lr.shape[-2] * s, lr.shape[-1] * s)
    z = [torch.randn(job["n"], *sh, device=device) * 0.9 for sh in shapes]

    def under(context):
        def run():
            with context():
                model.decode(lr, z, cond=model.condition(lr))
        return run

    times = interleaved({"inference_mode": under(torch.inference_mode),
                         "no_grad": under(torch.no_grad),
                         "autograd_recording": under(torch.enable_grad)},
                        job["runs"], job["warmup"], device)
    result = {k: summary(v) for k, v in times.items()}
    result.update(size=job["size"], n=job["n"])
    return result


def case_fusion(job, device):
    import torch
    import torch.nn.functional as F

    model = build_model(job["preset"], device)
    lr = lr_image(job["size"], device)
    with torch.inference_mode():
        u = model.condition(lr)[0]
    steps = [m for name, m in model.flow_modules().items() if name.startswith("L1.step")]
    weights = []
    for step in steps:
        weights.append(step.injector.subnet[0].weight)
        weights.append(step.coupling.subnet[0].weight[:, step.coupling.passive_channels:])
    wide = torch.cat(weights).detach().contiguous()
    weights = [w.detach().contiguous() for w in weights]

    def separate():
        with torch.inference_mode():
            for w in weights:
                F.conv2d(u, w, padding=1)

    def one_wide():
        with torch.inference_mode():
            F.conv2d(u, wide, padding=1)

    with torch.inference_mode():
        diff = float((torch.cat([F.conv2d(u, w, padding=1) for w in weights], 1)
                      - F.conv2d(u, wide, padding=1)).abs().max())
    times = interleaved({"separate_convs": separate, "one_wide_conv": one_wide},
                        job["runs"], job["warmup"], device)
    sample_times = timed(lambda: model.sample(lr, 0.9, n=1), max(1, job["runs"] - 1), 0, device)
    result = {k: summary(v) for k, v in times.items()}
    m = {k: median(v) for k, v in times.items()}
    result.update(
        size=job["size"], level=1, convs=len(weights), condition_shape=list(u.shape),
        wide_output_mb=round(u.shape[0] * wide.shape[0] * u[0, 0].numel() * 4 / 2**20, 1),
        speedup=round(m["separate_convs"] / m["one_wide_conv"], 3),
        saved_fraction_of_sample=round((m["separate_convs"] - m["one_wide_conv"])
                                       / median(sample_times), 3),
        sample_n1=summary(sample_times), max_abs_diff=diff,
    )
    return result


def case_layout(job, device):
    import torch

    plain = build_model(job["preset"], device)
    fast = build_model(job["preset"], device)
    fast.load_state_dict(plain.state_dict())
    from cinn_sr.fastpath import fast_encoder

    fast_encoder(fast, channels_last=True, bf16=False)
    lr = lr_image(job["size"], device)

    def run(model):
        def go():
            with torch.inference_mode():
                model.condition(lr)
        return go

    with torch.inference_mode():
        diff = max(float((a - b).abs().max())
                   for a, b in zip(plain.condition(lr), fast.condition(lr), strict=True))
    times = interleaved({"contiguous": run(plain), "channels_last": run(fast)},
                        job["runs"], job["warmup"], device)
    result = {k: summary(v) for k, v in times.items()}
    result.update(size=job["size"], max_abs_diff=diff,
                  speedup=round(median(times["contiguous"]) / median(times["channels_last"]), 3))
    return result


def case_compile(job, device):
    import torch

    from cinn_sr.fastpath import compile_flow

    eager = build_model(job["preset"], device)
    compiled = build_model(job["preset"], device)
    compiled.load_state_dict(eager.state_dict())
    t0 = time.perf_counter()
    ok = compile_flow(compiled)
    lr = lr_image(job["size"], device)
    g = torch.Generator(device=device).manual_seed(6)
    z_eager = eager.sample(lr, 0.9, n=job["n"], generator=g)
    g.manual_seed(6)
    z_comp = compiled.sample(lr, 0.9, n=job["n"], generator=g)
    compile_sample_s = time.perf_counter() - t0
    diff = float((z_eager - z_comp).abs().max())
    times = interleaved({"sample_eager": lambda: eager.sample(lr, 0.9, n=job["n"]),
                         "sample_compiled": lambda: compiled.sample(lr, 0.9, n=job["n"])},
                        job["runs"], job["warmup"], device)
    steps = {"train_eager": train_step_fn(eager, job["batch"], job["hr"], device),
             "train_compiled": train_step_fn(compiled, job["batch"], job["hr"], device)}
    t0 = time.perf_counter()
    steps["train_compiled"]()
    compile_train_s = time.perf_counter() - t0
    times.update(interleaved(steps, job["runs"], job["warmup"], device))
    result = {k: summary(v) for k, v in times.items()}
    m = {k: median(v) for k, v in times.items()}
    result.update(
        compiled=ok, size=job["size"], n=job["n"], batch=job["batch"], hr=job["hr"],
        first_sample_with_compile_s=round(compile_sample_s, 2),
        first_train_step_with_compile_s=round(compile_train_s, 2),
        max_abs_diff_sample=diff,
        speedup_sample=round(m["sample_eager"] / m["sample_compiled"], 3),
        speedup_train=round(m["train_eager"] / m["train_compiled"], 3),
    )
    return result


CASES = {"train": case_train, "sample": case_sample, "tiled": case_tiled,
         "invconv": case_invconv, "naive": case_naive, "hrbranch": case_hrbranch,
         "inference": case_inference, "fusion": case_fusion, "layout": case_layout,
         "compile": case_compile}


def run_job(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = CASES[job["case"]](job, device)
    result["case_wall_s"] = round(time.perf_counter() - t0, 2)
    result["peak_rss_mb"] = peak_rss_mb()
    if device.type == "cuda":
        result["cuda_max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


# ---- the parent: plan, one child per job, one JSON report --------------------------------


def plan(args, profile: dict) -> list[dict]:
    runs = args.runs or profile["runs"]
    warmup = profile["warmup"] if args.warmup is None else args.warmup
    preset = args.preset or profile["preset"]
    presets = args.presets.split(",") if args.presets else profile["presets"]
    batches = [int(b) for b in args.batches.split(",")] if args.batches else profile["batches"]
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else profile["sizes"]
    samples = [int(n) for n in args.samples.split(",")] if args.samples else profile["samples"]
    tiled = [int(s) for s in args.tiled.split(",")] if args.tiled else profile["tiled"]
    tile = args.tile or profile["tile"]
    cases = args.cases.split(",") if args.cases else DEFAULT_CASES
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    common = dict(threads=args.threads, device=args.device, runs=runs, warmup=warmup)
    hr, size, n_max = profile["hr"], sizes[0], max(samples)
    jobs: list[tuple[str, dict]] = []
    for case in cases:
        if case == "train":
            jobs += [(f"train:{p}:b{b}", dict(case=case, preset=p, batch=b, hr=hr))
                     for p in presets for b in batches]
        elif case == "sample":
            jobs += [(f"sample:{preset}:lr{s}:n{n}", dict(case=case, preset=preset, size=s, n=n))
                     for s in sizes for n in samples]
        elif case == "tiled":
            tiled_runs = dict(runs=args.runs or profile["tiled_runs"],
                              warmup=0 if args.warmup is None else args.warmup)
            jobs += [(f"tiled:{preset}:lr{s}", dict(case=case, preset=preset, size=s, tile=tile,
                                                    overlap=profile["overlap"], **tiled_runs))
                     for s in tiled]
        elif case == "invconv":
            jobs.append((f"invconv:{preset}", dict(case=case, preset=preset, batch=batches[0],
                                                   hr=hr, size=sizes[0])))
        elif case in ("naive", "inference"):
            jobs.append((f"{case}:{preset}:lr{size}:n{n_max}",
                         dict(case=case, preset=preset, size=size, n=n_max)))
        elif case in ("hrbranch", "fusion", "layout"):
            jobs.append((f"{case}:{preset}:lr{size}", dict(case=case, preset=preset, size=size)))
        elif case == "compile":
            jobs.append((f"compile:{preset}", dict(case=case, preset=preset, size=sizes[0],
                                                   n=n_max, batch=batches[0], hr=hr)))
    return [(name, {**common, **job}) for name, job in jobs]


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
            "python": platform.python_version()}


def child_versions(threads: int) -> dict:
    code = (f"import json, torch; torch.set_num_threads({threads}); print(json.dumps("
            "{'torch': torch.__version__, 'threads': torch.get_num_threads(), 'cuda': "
            "torch.cuda.is_available()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-300:]}


def targets(results: dict) -> dict:
    """The issue's targets, each from one case of this report (None when not run)."""
    out = {}
    naive = next((r for k, r in results.items() if k.startswith("naive:") and "n" in r), None)
    if naive:
        ratio = naive["ratio_ours_n_over_n1"]
        out["n10_over_n1_at_most_2"] = {"ratio": ratio, "met": ratio <= 2,
                                        "case": f"naive lr{naive['size']} n{naive['n']}"}
    tiled = {k: r for k, r in results.items() if k.startswith("tiled:") and "peak_rss_mb" in r}
    for name, r in tiled.items():
        if name.startswith("tiled:div2k-4x:lr256"):
            out["tiled_256_peak_at_most_1536_mb"] = {"peak_rss_mb": r["peak_rss_mb"],
                                                     "met": r["peak_rss_mb"] <= 1536,
                                                     "case": name}
    inv = next((r for k, r in results.items() if k.startswith("invconv:div2k-4x")
                and "ratio_train_lu_over_full" in r), None)
    if inv:
        out["lu_train_step_faster_than_full"] = {"ratio_lu_over_full":
                                                 inv["ratio_train_lu_over_full"],
                                                 "met": inv["ratio_train_lu_over_full"] < 1}
    return out


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="tiny presets (about a minute)")
    which.add_argument("--full", action="store_true", help="div2k-4x figures")
    p.add_argument("--cases", help=f"comma list of {', '.join(CASES)} (default: all but compile)")
    p.add_argument("--preset", help="preset for the sampling and comparison cases "
                                    "(a cinn-sr preset or 'small')")
    p.add_argument("--presets", help="comma list of presets for the train case")
    p.add_argument("--batches", help="comma list of train batch sizes")
    p.add_argument("--sizes", help="comma list of LR sizes for the sample case")
    p.add_argument("--samples", help="comma list of sample counts n")
    p.add_argument("--tiled", help="comma list of LR sizes for the tiled case")
    p.add_argument("--tile", type=int, help="tile size in LR pixels for the tiled case")
    p.add_argument("--runs", type=int, help="timed runs per figure (median reported)")
    p.add_argument("--warmup", type=int, help="untimed warm-up runs")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--out", help="also write the JSON report to this file")
    p.add_argument("--_job", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args._job:
        result = run_job(json.loads(args._job))
        with open(args._result, "w") as f:
            json.dump(result, f)
        return
    name = "quick" if args.quick else "full" if args.full else "small"
    profile = PROFILES[name]
    jobs = plan(args, profile)
    report = {"bench": "benchmarks/bench.py", "profile": name, "argv": sys.argv[1:],
              "machine": machine(), **child_versions(args.threads),
              "load_average_start": load_average(),
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "results": {}}
    t_all = time.perf_counter()
    for job_name, job in jobs:
        log(f"{job_name} ...")
        fd, path = tempfile.mkstemp(suffix=".json", prefix="cinn_sr_bench_")
        os.close(fd)
        t0 = time.perf_counter()
        cmd = [sys.executable, os.path.abspath(__file__), "--_job", json.dumps(job),
               "--_result", path]
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if proc.returncode == 0:
            with open(path) as f:
                result = json.load(f)
        else:
            result = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                      else f"child exited with {proc.returncode}"}
        os.unlink(path)
        result["process_wall_s"] = round(time.perf_counter() - t0, 2)
        report["results"][job_name] = result
        log(f"{job_name}: {json.dumps({k: v for k, v in result.items() if 'times' not in k})}")
        if args.out:  # the report so far, so that an interrupted run keeps its figures
            write_atomic(args.out, json.dumps(report, indent=1))
    report["targets"] = targets(report["results"])
    report["load_average_end"] = load_average()
    report["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        write_atomic(args.out, text)


def write_atomic(path: str, text: str) -> None:
    """``text`` and a newline to ``path`` through `cinn_sr.datasets.atomic.atomic_write_text`,
    loaded from its file: importing the `cinn_sr.datasets` package would import torch, which
    the parent never does."""
    import importlib.util

    atomic_file = Path(__file__).resolve().parents[1] / "datasets" / "atomic.py"
    spec = importlib.util.spec_from_file_location("_cinn_sr_atomic", atomic_file)
    atomic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(atomic)
    atomic.atomic_write_text(path, text + "\n")


if __name__ == "__main__":
    main()
