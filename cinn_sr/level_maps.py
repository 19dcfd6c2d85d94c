"""HR-pixel maps (masks, temperature maps) on the flow's latent levels.

A latent level of size h x w covers the (padded) HR image in blocks of (H/h) x (W/w) pixels;
a map gets to the level by max-pooling over each block, so a latent entry takes the largest
value of the HR pixels it covers (a mask: inside when any of its pixels is).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def as_map_batch(values: Tensor, name: str = "map") -> Tensor:
    """An [H, W] or [B, 1, H, W] map as [B|1, 1, H, W]; ValueError for other shapes."""
    if values.dim() == 2:
        values = values[None, None]
    if values.dim() != 4 or values.shape[1] != 1:
        raise ValueError(f"{name} must be [H, W] or [B, 1, H, W], got {list(values.shape)}")
    return values


def map_at_level(values: Tensor, level_hw: tuple[int, int]) -> Tensor:
    """A [B|1, 1, H, W] map max-pooled to a latent level of size `level_hw`."""
    (hr_h, hr_w), (h, w) = values.shape[-2:], level_hw
    if hr_h % h or hr_w % w:
        raise ValueError(f"a map of {hr_h}x{hr_w} HR pixels does not map onto a {h}x{w} level")
    if (hr_h // h, hr_w // w) == (1, 1):
        return values
    return F.max_pool2d(values, kernel_size=(hr_h // h, hr_w // w))


def pad_to(values: Tensor, size: tuple[int, int], mode: str = "replicate") -> Tensor:
    """Pad a [B, 1, H, W] map bottom/right to `size`: replicating its edge by default, with
    zeros for mode="constant"."""
    pad = (0, size[1] - values.shape[-1], 0, size[0] - values.shape[-2])
    return values if pad == (0, 0, 0, 0) else F.pad(values, pad, mode=mode)


def check_temperature_map(temperature: Tensor, hr_size: tuple[int, int]) -> Tensor:
    """A temperature map of the HR size as float [B|1, 1, H, W]; ValueError unless it is finite
    and >= 0 everywhere."""
    if not temperature.is_floating_point():
        temperature = temperature.float()
    temperature = as_map_batch(temperature, "temperature map")
    if tuple(temperature.shape[-2:]) != tuple(hr_size):
        raise ValueError(
            f"temperature map is {temperature.shape[-2]}x{temperature.shape[-1]}, the SR image "
            f"is {hr_size[0]}x{hr_size[1]}: give one value per HR pixel"
        )
    if not bool(torch.isfinite(temperature).all()) or float(temperature.min()) < 0:
        raise ValueError("temperature map values must be finite numbers >= 0")
    return temperature
