"""2x2 space-to-depth ("squeeze"), channel order as the SRFlow reference code's squeeze2d.

    forward:  (C, H, W) -> (4C, H/2, W/2); output channel 4c + 2i + j holds x[c, 2h+i, 2w+j]
    reverse:  the inverse rearrangement
    log-det:  0 (a permutation)
"""

from __future__ import annotations

import torch
from FrEIA.modules import InvertibleModule
from torch import Tensor

from .shapes import check_image_input, check_no_condition


def squeeze2d(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2] (H and W even)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze2d(z: Tensor) -> Tensor:
    """[B, 4C, H, W] -> [B, C, 2H, 2W], the inverse of squeeze2d."""
    b, c4, h, w = z.shape
    z = z.view(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c4 // 4, 2 * h, 2 * w)


class Squeeze(InvertibleModule):
    """FrEIA wrapper of squeeze2d / unsqueeze2d."""

    def __init__(self, dims_in, dims_c=None):
        super().__init__(dims_in, dims_c)
        check_no_condition(self, dims_c)
        channels, height, width = check_image_input(self, dims_in)
        if height % 2 or width % 2:
            raise ValueError(f"Squeeze: expected even height and width, got input shape "
                             f"{(channels, height, width)}")

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        x = x_or_z[0]
        if not rev and (x.shape[2] % 2 or x.shape[3] % 2):
            raise ValueError(f"Squeeze: expected even height and width, got {tuple(x.shape)}")
        out = unsqueeze2d(x) if rev else squeeze2d(x)
        return (out,), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def output_dims(self, input_dims):
        channels, height, width = input_dims[0]
        return [(4 * channels, height // 2, width // 2)]
