"""Quality of a trained model on held-out photos, against bicubic and its own RRDB encoder.

    python benchmarks/quality.py [--model small-4x] [--images recipes/small-4x/val]
                                 [--rrdb CKPT] [--nonfinite-samples 1000] [--out FILE.json]

For every HR image of `--images` (never trained on) the LR is its MATLAB-bicubic downscale
rounded to uint8 (the `cinn-sr eval` convention of the SRFlow paper's experiments,
section 5: RGB, no border crop). Rows:
bicubic upscaling; the RRDB encoder's own SR output (the paper's L1 "RRDB" row; `--rrdb`
takes another checkpoint's encoder, e.g. the `cinn-sr pretrain` run); the flow at
temperature 0 and at 0.5 / 0.7 / 0.9 (PSNR, SSIM, LPIPS, LR-PSNR averaged over 3 samples;
NTIRE 2021 diversity over 10). Then non-finite pixels over `--nonfinite-samples` samples
per temperature, `restore` of each photo with Gaussian noise sigma 15/255, and
`content_transfer` of another photo's centre into a sample against the naive paste.
The issue's bar is checked at the end. Prints a table; writes JSON to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import cinn_sr
from cinn_sr.datasets import ImageFolderPairs, imresize
from cinn_sr.datasets.atomic import atomic_write_text
from cinn_sr.evaluate import Scorer
from cinn_sr.metrics import lr_psnr, psnr, to_uint8

TEMPERATURES = (0.5, 0.7, 0.9)
METRICS = ("psnr", "ssim", "lpips", "lr_psnr")
NOISE_SIGMA = 15 / 255


def mean_scores(scorer: Scorer, outputs: list[list[np.ndarray]], pairs) -> dict[str, float]:
    """Per-image scores of `outputs[i]` (samples of image i), averaged over the images."""
    rows = [scorer.score(samples, hr, lr) for samples, (hr, lr) in zip(outputs, pairs, strict=True)]
    return {name: float(np.mean([row[name] for row in rows])) for name in rows[0]}


def flow_samples(model, lr: torch.Tensor, temperature: float, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return model.sample(lr[None], temperature, n, generator=generator)


def nonfinite_pixels(model, lrs: list[torch.Tensor], temperature: float, total: int) -> int:
    """Non-finite values in `total` samples spread evenly over the images."""
    per_image, count = math.ceil(total / len(lrs)), 0
    for index, lr in enumerate(lrs):
        for start in range(0, per_image, 25):
            n = min(25, per_image - start)
            sr = flow_samples(model, lr, temperature, n, seed=1000 * index + start)
            count += int((~torch.isfinite(sr)).sum())
    return count


def restoration(model, hrs: list[torch.Tensor]) -> tuple[float, float]:
    """Mean PSNR of the noisy photos and of their restorations, against the clean HR."""
    noisy_scores, restored_scores = [], []
    for index, hr in enumerate(hrs):
        generator = torch.Generator().manual_seed(index)
        noise = torch.randn(hr.shape, generator=generator) * NOISE_SIGMA
        noisy = (hr + noise).clamp(0, 1)
        restored = cinn_sr.restore(model, noisy[None], generator=generator)[0]
        noisy_scores.append(psnr(noisy, hr))
        restored_scores.append(psnr(restored.clamp(0, 1), hr))
    return float(np.mean(noisy_scores)), float(np.mean(restored_scores))


def content_transfer_scores(model, hrs, lrs) -> tuple[float, float]:
    """Mean LR-PSNR of the naive paste and of `content_transfer`: the centre half of the
    next photo pasted into a temperature-0.7 sample of each photo."""
    naive, transferred = [], []
    for index, (hr, lr) in enumerate(zip(hrs, lrs, strict=True)):
        image = flow_samples(model, lr, 0.7, 1, seed=index)[0].clamp(0, 1)
        pasted = hrs[(index + 1) % len(hrs)]
        mask = torch.zeros(1, *hr.shape[-2:])
        h, w = hr.shape[-2:]
        mask[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
        composite = torch.where(mask > 0.5, pasted, image)
        generator = torch.Generator().manual_seed(index)
        result = cinn_sr.content_transfer(
            model, lr[None], image[None], pasted[None], mask[None], 0.7, generator=generator
        )[0]
        naive.append(lr_psnr(composite, lr, model.config.scale))
        transferred.append(lr_psnr(result.clamp(0, 1), lr, model.config.scale))
    return float(np.mean(naive)), float(np.mean(transferred))


def bar(results: dict) -> list[tuple[str, bool, str]]:
    """The shipped model's quality bar: (criterion, met, figures)."""
    bic, t0, t7 = results["bicubic"], results["t0"], results["t0.7"]
    worst = max(results["nonfinite"].values())
    noisy, restored = results["restore_psnr"]
    naive, transferred = results["content_lr_psnr"]
    return [
        ("t0 PSNR >= bicubic + 0.5 dB", t0["psnr"] >= bic["psnr"] + 0.5,
         f"{t0['psnr']:.2f} vs {bic['psnr'] + 0.5:.2f}"),
        ("t0.7 LPIPS <= 0.85 x bicubic", t7["lpips"] <= 0.85 * bic["lpips"],
         f"{t7['lpips']:.4f} vs {0.85 * bic['lpips']:.4f}"),
        ("t0.7 LR-PSNR >= 45 dB", t7["lr_psnr"] >= 45, f"{t7['lr_psnr']:.2f}"),
        ("no non-finite pixel at t <= 0.9", worst == 0, f"{worst} at worst"),
        ("restore >= noisy + 1.5 dB", restored >= noisy + 1.5, f"{restored:.2f} vs {noisy:.2f}"),
        ("content transfer raises LR-PSNR", transferred > naive,
         f"{transferred:.2f} vs {naive:.2f}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small-4x", help="checkpoint or shipped model name")
    parser.add_argument("--images", default="recipes/small-4x/val", help="held-out HR images")
    parser.add_argument("--rrdb", help="checkpoint whose encoder gives the RRDB row")
    parser.add_argument("--nonfinite-samples", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="JSON file for the figures")
    args = parser.parse_args()
    started = time.perf_counter()
    model = cinn_sr.load(args.model)
    scale = model.config.scale
    rrdb = cinn_sr.load(args.rrdb).encoder if args.rrdb else model.encoder
    folder = ImageFolderPairs(args.images, scale)
    names = [folder[i][0] for i in range(len(folder))]
    hrs = [folder[i][1] for i in range(len(folder))]
    lrs = [folder[i][2] for i in range(len(folder))]
    pairs = [(to_uint8(hr), to_uint8(lr)) for hr, lr in zip(hrs, lrs, strict=True)]
    scorer = Scorer(METRICS, scale)
    diversity = Scorer(("diversity",), scale)
    results: dict = {"model": args.model, "images": names}
    with torch.inference_mode():
        results["bicubic"] = mean_scores(
            scorer, [[imresize(lr[None], scale)[0]] for lr in lrs], pairs
        )
        results["rrdb"] = mean_scores(scorer, [[rrdb.sr(lr[None])[0]] for lr in lrs], pairs)
        results["t0"] = mean_scores(scorer, [flow_samples(model, lr, 0, 1, 0) for lr in lrs], pairs)
        for t in TEMPERATURES:
            ten = [list(flow_samples(model, lr, t, 10, seed=i)) for i, lr in enumerate(lrs)]
            results[f"t{t}"] = mean_scores(scorer, [s[:3] for s in ten], pairs)
            results[f"t{t}"] |= mean_scores(diversity, ten, pairs)
        results["nonfinite"] = {
            f"t{t}": nonfinite_pixels(model, lrs, t, args.nonfinite_samples) for t in TEMPERATURES
        }
    results["nonfinite_samples"] = args.nonfinite_samples
    results["restore_psnr"] = restoration(model, hrs)
    with torch.inference_mode():
        results["content_lr_psnr"] = content_transfer_scores(model, hrs, lrs)
    results["seconds"] = time.perf_counter() - started

    print(f"{args.model} on {len(names)} held-out images ({', '.join(names)})")
    header = f"{'':<10}" + "".join(f"{m:>10}" for m in (*METRICS, "diversity"))
    print(header)
    print("-" * len(header))
    for row in ("bicubic", "rrdb", "t0", *(f"t{t}" for t in TEMPERATURES)):
        cells = "".join(
            f"{results[row][m]:>10.4f}" if m in results[row] else f"{'':>10}"
            for m in (*METRICS, "diversity")
        )
        print(f"{row:<10}{cells}")
    print(f"non-finite pixels in {args.nonfinite_samples} samples: {results['nonfinite']}")
    print("restore sigma 15/255: noisy {:.2f} dB -> restored {:.2f} dB".format(
        *results["restore_psnr"]))
    print("content transfer LR-PSNR: naive paste {:.2f} dB -> transferred {:.2f} dB".format(
        *results["content_lr_psnr"]))
    results["bar"] = [
        {"criterion": c, "met": met, "figures": f} for c, met, f in bar(results)
    ]
    for c, met, f in bar(results):
        print(f"{'met ' if met else 'MISS'}  {c}: {f}")
    print(f"({results['seconds']:.0f} s)")
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
