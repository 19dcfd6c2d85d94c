#!/usr/bin/env python3
"""Peak memory and time of `cinn-sr sample --tile` on one large LR image; prints JSON lines.

    python benchmarks/bench_tiles.py --size 3000 --model tiny-4x
    python benchmarks/bench_tiles.py --size 1000 --model small-4x --tile 128

The LR image is a smooth random RGB image (uint8 PNG) of size x size. `tiny-4x` is a freshly
initialised model (`model.initialize` on photo patches) saved as a checkpoint; any other
name is a shipped model or a checkpoint path. Each run is its own child process, and its
peak RSS is that child's alone (``os.wait4``; the images and the checkpoint are made in
another child, as a child's peak RSS starts at its parent's RSS when it forks); a second
run on a 64 x 64 LR gives the fixed part (python, torch, the model's weights), so
``peak - base`` is what the image costs.
``--root`` runs the command with another checkout's ``cinn_sr`` first on ``sys.path``
(e.g. an exported older commit, to compare before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def smooth_image(size: int, seed: int = 0) -> np.ndarray:
    """A size x size uint8 RGB image: coarse random colours, bilinearly upsampled."""
    from torch import from_numpy
    from torch.nn.functional import interpolate

    coarse = np.random.default_rng(seed).random((1, 3, max(2, size // 32), max(2, size // 32)))
    fine = interpolate(from_numpy(coarse), size=(size, size), mode="bilinear")
    return np.floor(fine[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def tiny_checkpoint(path: Path) -> Path:
    """tiny-4x with its ActNorms initialised on four 64 x 64 photo patches, saved to `path`."""
    import torch

    import cinn_sr
    from cinn_sr.datasets import imresize, sample_photos

    torch.manual_seed(0)
    crops = [photo[100:164, 100:164] for _, photo in sample_photos()[:4]]
    hr = torch.stack([torch.from_numpy(c.copy()).permute(2, 0, 1) for c in crops]).float() / 255
    model = cinn_sr.SRFlow.from_preset("tiny-4x")
    model.initialize(imresize(hr, 1 / 4), hr)
    return cinn_sr.save_checkpoint(path, model)


CHILD = """
import sys
root = sys.argv.pop(1)
if root:  # this checkout first, also over an editable install's finder
    sys.path.insert(0, root)
    for module in [m for name, m in sys.modules.items() if name.startswith("__editable__")]:
        mapping = getattr(module, "MAPPING", {})
        if "cinn_sr" in mapping:
            mapping.update(cinn_sr=f"{root}/cinn_sr", cli=f"{root}/cli")
            mapping["cinn_sr.datasets"] = f"{root}/datasets"
            mapping["cinn_sr.blocks"] = f"{root}/blocks"
from cli import main
sys.exit(main())
"""
"""The child's program: `cinn-sr` with `root`'s (argv[1]) packages when one is given."""


def run_sample(checkpoint: str, image: Path, out: Path, tile: int | None, root: str | None):
    """Run `cinn-sr sample` in a child process: (seconds, peak RSS in MB, its last line)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    command = [sys.executable, "-c", CHILD, root or ""]
    command += ["sample", checkpoint, str(image), "--out", str(out), "--device", "cpu"]
    command += ["--tile", str(tile)] if tile else []
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, cwd=root or None)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"cinn-sr sample failed ({status}): {output}")
    return seconds, usage.ru_maxrss / 1024, output.strip().splitlines()[-1]


def prepare(folder: Path, model: str, size: int) -> str:
    """Write the LR images (``base.png``, ``lr.png``) and, for tiny-4x, the checkpoint into
    ``folder``; returns the checkpoint argument."""
    for side, name in ((64, "base.png"), (size, "lr.png")):
        Image.fromarray(smooth_image(side)).save(folder / name)
    return str(tiny_checkpoint(folder / "tiny-4x.pt")) if model == "tiny-4x" else model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=3000, help="LR height and width")
    parser.add_argument("--model", default="tiny-4x", help="tiny-4x, a shipped name or a path")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--root", help="checkout whose cinn_sr the child imports")
    parser.add_argument("--label", default="", help="a name for this run in the report")
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:  # in a child: a child's peak RSS starts at its parent's RSS (fork, exec)
        print(prepare(Path(args.prepare), args.model, args.size))
        return
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        checkpoint = subprocess.run(
            [sys.executable, __file__, "--prepare", str(temp), "--model", args.model,
             "--size", str(args.size)], check=True, capture_output=True, text=True,
        ).stdout.strip()
        _, base_mb, _ = run_sample(checkpoint, temp / "base.png", temp / "base", None, args.root)
        seconds, peak_mb, line = run_sample(
            checkpoint, temp / "lr.png", temp / "out", args.tile, args.root
        )
        Image.MAX_IMAGE_PIXELS = None  # the SR image is large on purpose
        with Image.open(next((temp / "out").iterdir())) as image:
            size = image.size
    print(json.dumps({
        "label": args.label, "model": args.model, "lr": [args.size, args.size],
        "sr": list(size), "tile": args.tile, "threads": os.environ.get("OMP_NUM_THREADS", "1"),
        "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb), "base_rss_mb": round(base_mb),
        "image_mb": round(peak_mb - base_mb), "summary": line,
    }), flush=True)


if __name__ == "__main__":
    main()
