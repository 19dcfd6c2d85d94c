"""Image, mask and map files for `cinn-sr edit` and `sample`: reading them as tensors,
checking that they fit."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from cinn_sr.datasets import check_scaled_size, read_image, to_tensor


def read_rgb(path: str | os.PathLike, device: torch.device | str = "cpu") -> torch.Tensor:
    """An image file as a [1, 3, H, W] float tensor in [0, 1]."""
    return to_tensor(read_image(path))[None].to(device)


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


def read_grey(path: str | os.PathLike) -> torch.Tensor:
    """A grey image as a float [H, W] tensor of grey / 255 in [0, 1] (a colour image is
    warned about and its channels averaged)."""
    pixels = torch.from_numpy(read_image(path)).double()
    if not (pixels == pixels[..., :1]).all():
        warnings.warn(f"{Path(path).name}: not grey; its channels are averaged", stacklevel=2)
    return (pixels.mean(-1) / 255).float()


def check_fit(
    scale: int, lr: tuple[str, torch.Tensor], *hr_side: tuple[str, torch.Tensor]
) -> None:
    """Raise ValueError, one line naming the files and sizes, unless each (name, tensor) of
    ``hr_side`` is ``scale`` times the size of the (name, tensor) ``lr`` (``check_scaled_size``)."""
    check_scaled_size(
        scale,
        (lr[0], lr[1].shape[-2:]),
        *((name, tensor.shape[-2:]) for name, tensor in hr_side),
        scale_text=f"the checkpoint's {scale}x",
    )
