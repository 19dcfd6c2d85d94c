"""Image and mask files for `cinn-sr edit`: reading them as tensors, checking that they fit."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from cinn_sr.datasets import read_image


def read_rgb(path: str | os.PathLike, device: torch.device | str = "cpu") -> torch.Tensor:
    """An image file as a [1, 3, H, W] float tensor in [0, 1]."""
    pixels = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None]
    return pixels.to(device=device, dtype=torch.float32) / 255


def read_mask(path: str | os.PathLike, device: torch.device | str = "cpu") -> torch.Tensor:
    """A mask image as a bool [H, W] tensor: inside where the grey value is above 127 (white
    marks the region to edit). A colour mask (warned about) counts a pixel inside when any
    channel is above 127; a mask with no pixel inside is a ValueError (the edit would change
    nothing)."""
    pixels = torch.from_numpy(read_image(path))
    if not (pixels == pixels[..., :1]).all():
        warnings.warn(
            f"{Path(path).name}: the mask is not grey; inside is where any channel is above 127",
            stacklevel=2,
        )
    inside = pixels.amax(-1) > 127
    if not inside.any():
        raise ValueError(
            f"{Path(path).name}: no pixel of the mask is above 127 (white marks the region to "
            "edit), so the edit would change nothing"
        )
    return inside.to(device)


def _size(tensor: torch.Tensor) -> str:
    return f"{tensor.shape[-2]}x{tensor.shape[-1]}"


def check_fit(
    scale: int, lr: tuple[str, torch.Tensor], *hr_side: tuple[str, torch.Tensor]
) -> None:
    """Raise ValueError, one line naming the files and sizes, unless each (name, tensor) of
    ``hr_side`` is ``scale`` times the size of the (name, tensor) ``lr``."""
    lr_name, lr_tensor = lr
    expected = (lr_tensor.shape[-2] * scale, lr_tensor.shape[-1] * scale)
    for name, tensor in hr_side:
        if tuple(tensor.shape[-2:]) != expected:
            raise ValueError(
                f"{name} is {_size(tensor)} but {lr_name} ({_size(lr_tensor)}) at the "
                f"checkpoint's {scale}x needs {expected[0]}x{expected[1]}"
            )
