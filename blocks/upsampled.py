"""A convolution over a nearest-upsampled map, computed at the map's low resolution.

With x = nearest_f(low) (each low-resolution pixel repeated on an f x f block), the output
rows f i + a of a k x k convolution (stride 1, zero padding p) read only the low rows
i + (a + t - p) // f for its taps t: a k x k conv at the high resolution is, per phase
(a, b) of the f x f block, an S x S conv at the low one (S = 2 for k = 3), with the taps
that fall on the same low pixel summed. All f^2 phases run as one convolution with
f^2 times the output channels over the low-resolution map: (S / k)^2 of the multiply-adds
(4/9 for a 3x3 conv), the same result to float rounding.

`nearest_source` finds the low-resolution map behind a tensor that is constant on f x f
blocks. Gradients through it reach only the top-left pixel of each block (carrying the
block's sum): exactly what a nearest upsampling passes back to its input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nearest_source(x: Tensor, factor: int) -> Tensor | None:
    """x[..., ::factor, ::factor] if x is constant on factor x factor blocks, else None."""
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        return None
    low = x[..., ::factor, ::factor]
    blocks = x.unflatten(-1, (w // factor, factor)).unflatten(-3, (h // factor, factor))
    with torch.no_grad():
        same = bool((blocks == low[..., :, None, :, None]).all())
    return low if same else None


def _phase_selection(kernel: int, padding: int, factor: int, like: Tensor):
    """(select[f, S, k], first[f]): tap t of phase a reads low offset first[a] + slot s,
    select[a, s, t] = 1."""
    offsets = [[(a + t - padding) // factor for t in range(kernel)] for a in range(factor)]
    first = [row[0] for row in offsets]
    span = max(row[-1] - row[0] for row in offsets) + 1
    select = torch.zeros(factor, span, kernel, dtype=like.dtype, device=like.device)
    for a, row in enumerate(offsets):
        for t, offset in enumerate(row):
            select[a, offset - first[a], t] = 1
    return select, first


def conv_over_upsampled(low: Tensor, weight: Tensor, bias: Tensor | None, factor: int,
                        padding: int) -> Tensor:
    """F.conv2d(nearest_factor(low), weight, bias, padding=padding), at low's resolution.

    `weight` is square (k x k); the output has the upsampled size (f h, f w).
    """
    out_channels, kernel = weight.shape[0], weight.shape[-1]
    select, first = _phase_selection(kernel, padding, factor, weight)
    span = select.shape[1]
    phases = torch.einsum("asi,btj,ocij->abocst", select, select, weight)
    top, bottom = -min(first), max(first) + span - 1
    y = F.conv2d(F.pad(low, (top, bottom, top, bottom)),
                 phases.reshape(factor * factor * out_channels, weight.shape[1], span, span))
    y = y.unflatten(1, (factor, factor, out_channels))
    h, w = low.shape[-2:]
    rows = [first[a] + top for a in range(factor)]
    out = torch.stack([
        torch.stack([y[:, a, b, :, rows[a]:rows[a] + h, rows[b]:rows[b] + w]
                     for b in range(factor)], dim=-1)
        for a in range(factor)
    ], dim=-3).reshape(low.shape[0], out_channels, factor * h, factor * w)
    return out if bias is None else out + bias[:, None, None]
