"""The README picture: one held-out photo as LR | temperature 0 | three samples | HR, and
below it the same panels cropped and enlarged.

    python benchmarks/figure.py [--model small-4x] [--image recipes/small-4x/val/Path_0.png]
                                [--temperature 0.7] [--crop 150 170 64] [--out docs/small-4x.png]

The LR is the HR's MATLAB-bicubic downscale (shown with nearest-neighbour upscaling, so its
pixels stay visible); the crop is `--crop Y X SIZE` in HR pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import cinn_sr
from cinn_sr.datasets import imresize, read_image, to_tensor, write_image
from cinn_sr.sampling import SAMPLE_TEMPERATURE

LABEL_HEIGHT, GAP = 18, 4


def panels(
    model, hr: torch.Tensor, temperature: float, seed: int
) -> list[tuple[str, torch.Tensor]]:
    scale = model.config.scale
    lr = imresize(hr[None], 1 / scale).clamp(0, 1)
    lr = (lr * 255).round() / 255
    generator = torch.Generator().manual_seed(seed)
    samples = model.sample(lr, temperature, 3, generator=generator).clamp(0, 1)
    mode = model.sample(lr, 0).clamp(0, 1)[0]
    shown_lr = F.interpolate(lr, scale_factor=scale, mode="nearest")[0]
    return [
        ("LR (x4)", shown_lr),
        ("temperature 0", mode),
        *((f"sample {i + 1}, t={temperature:g}", s) for i, s in enumerate(samples)),
        ("HR", hr),
    ]


def grid(rows: list[list[tuple[str, torch.Tensor]]]) -> Image.Image:
    """Labelled panels, one row per list."""
    height = [r[0][1].shape[-2] for r in rows]
    width = [sum(p[1].shape[-1] for p in r) + GAP * (len(r) - 1) for r in rows]
    canvas = Image.new("RGB", (max(width), sum(h + LABEL_HEIGHT for h in height) + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for row, h in zip(rows, height, strict=True):
        x = 0
        for label, image in row:
            array = (image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            canvas.paste(Image.fromarray(array), (x, y + LABEL_HEIGHT))
            draw.text((x + 2, y + 3), label, fill="black")
            x += image.shape[-1] + GAP
        y += h + LABEL_HEIGHT + GAP
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small-4x")
    parser.add_argument("--image", default="recipes/small-4x/val/Path_0.png")
    parser.add_argument("--temperature", type=float, default=SAMPLE_TEMPERATURE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--crop", type=int, nargs=3, default=(150, 170, 64), metavar=("Y", "X", "SIZE")
    )
    parser.add_argument("--out", type=Path, default=Path("docs/small-4x.png"))
    args = parser.parse_args()
    model = cinn_sr.load(args.model)
    hr = to_tensor(read_image(args.image))
    with torch.inference_mode():
        row = panels(model, hr, args.temperature, args.seed)
    y, x, size = args.crop
    zoom = 256 // size
    crops = [
        (label, F.interpolate(p[None, :, y : y + size, x : x + size], scale_factor=zoom,
                              mode="nearest")[0])
        for label, p in row
    ]
    image = grid([row, [(f"{label}, crop", c) for label, c in crops]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_image(args.out, np.array(image))
    print(f"wrote {args.out} ({image.width}x{image.height})")


if __name__ == "__main__":
    main()
