"""Image and mask files for `cinn-sr edit`: reading them as tensors, checking that they fit."""

from __future__ import annotations

import os

import torch

from cinn_sr.datasets import read_image


def read_rgb(path: str | os.PathLike, device: torch.device | str = "cpu") -> torch.Tensor:
    """An image file as a [1, 3, H, W] float tensor in [0, 1]."""
    pixels = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None]
    return pixels.to(device=device, dtype=torch.float32) / 255


def read_mask(path: str | os.PathLike, device: torch.device | str = "cpu") -> torch.Tensor:
    """A mask image as a bool [H, W] tensor: inside where the gray value (mean of the colour
    channels of a colour file) is above 127."""
    gray = torch.from_numpy(read_image(path)).float().mean(-1)
    return (gray > 127).to(device)


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
