"""How much the SR samples of one LR image disagree, pixel by pixel.

For n samples y_1..y_n of one LR image, the mean image is their per-pixel mean and the
uncertainty map the per-pixel standard deviation: the root mean over the colour channels
of each channel's unbiased variance over the samples. It is zero at temperature 0 (every
sample is the mode) and grows with the temperature; where the flow is sure (flat regions,
edges the LR determines) it stays low.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

VIRIDIS = np.array(
    [
        (68, 1, 84), (71, 44, 122), (59, 82, 139), (44, 114, 142), (33, 145, 140),
        (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
    ],
    dtype=np.float64,
)
"""Anchors of the viridis colour map at 0, 1/8, ..., 1 (interpolated linearly)."""


def mean_and_std(samples: Tensor) -> tuple[Tensor, Tensor]:
    """(mean [C, H, W], std [1, H, W]) over samples [n, C, H, W] of one image, n >= 2."""
    if samples.dim() != 4 or samples.shape[0] < 2:
        raise ValueError(
            f"the uncertainty needs at least 2 samples [n, C, H, W], got {list(samples.shape)}"
        )
    samples = samples.double()
    variance = samples.var(dim=0, unbiased=True)
    return samples.mean(0).float(), variance.mean(0, keepdim=True).sqrt().float()


def colour_map(values: np.ndarray, top: float | None = None) -> np.ndarray:
    """A [H, W] map as viridis RGB uint8 [H, W, 3], 0 -> dark blue, `top` (default: the
    map's maximum) and above -> yellow."""
    top = float(values.max()) if top is None else top
    position = np.clip(values / top, 0, 1) if top > 0 else np.zeros_like(values, np.float64)
    scaled = position * (len(VIRIDIS) - 1)
    low = np.minimum(scaled.astype(np.int64), len(VIRIDIS) - 2)
    frac = (scaled - low)[..., None]
    rgb = VIRIDIS[low] * (1 - frac) + VIRIDIS[low + 1] * frac
    return np.floor(rgb + 0.5).astype(np.uint8)


def uncertainty_images(samples: Tensor) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """For samples [n, C, H, W] in [0, 1]: the mean image (float [C, H, W] in [0, 1], as
    `write_image` takes it), the std map as a colour image (uint8 HWC, scaled to its
    maximum) and the raw std values (float32 HW)."""
    mean, std = mean_and_std(samples)
    raw = std[0].numpy().astype(np.float32)
    return mean.clamp(0, 1), colour_map(raw), raw


def uncertainty(
    model, lr: Tensor, n: int = 10, temperature: float | Tensor = 0.9,
    generator: torch.Generator | None = None, cond=None,
) -> tuple[Tensor, Tensor]:
    """(mean [B, C, H, W], std [B, 1, H, W]) of n samples per image of the LR batch, clamped
    to [0, 1] as the written images are; a ValueError when a sample has NaN/inf pixels."""
    samples = model.sample(lr, temperature, n=n, generator=generator, cond=cond).float()
    if not bool(torch.isfinite(samples).all()):
        raise ValueError("a sample has NaN/inf pixels: lower the temperature")
    samples = samples.clamp(0, 1)
    pairs = [mean_and_std(group) for group in samples.unflatten(0, (lr.shape[0], n))]
    return torch.stack([m for m, _ in pairs]), torch.stack([s for _, s in pairs])
