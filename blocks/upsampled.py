"""A convolution over a nearest-upsampled map, computed at the map's low resolution.

With x = nearest_f(low) (each low-resolution pixel repeated on an f x f block), the output
rows f i + a of a k x k convolution (stride 1, zero padding p) read only the low rows
i + (a + t - p) // f for its taps t: per phase (a, b) of the f x f block it is a 2 x 2
conv at the low resolution (for k = 3), with the taps that fall on the same low pixel
summed. All phases together are one transposed convolution of stride f over the
low-resolution map, with a (2 f) x (2 f) kernel for k = 3: 4/9 of the multiply-adds, the
same result to float rounding.

`nearest_source` finds the low-resolution map behind a tensor that is constant on f x f
blocks. Gradients through it reach only the top-left pixel of each block (carrying the
block's sum): exactly what a nearest upsampling passes back to its input. `split_source`
splits a condition into its plain channels and the source of the others; inside
`sharing_sources()` it does so once per condition tensor for all the blocks that read it
(one check, and the blocks' gradients add up at the low resolution).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

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


_SHARED: ContextVar[dict | None] = ContextVar("shared_sources", default=None)


@contextmanager
def sharing_sources() -> Iterator[None]:
    """Within it, `split_source` splits each condition tensor once."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def split_source(u: Tensor, start: int, factor: int) -> tuple[Tensor, Tensor] | None:
    """(u[:, :start], nearest_source(u[:, start:], factor)), or None without a source.

    Under torch.compile the channels are taken to be what the caller declared (a
    data-dependent check cannot be traced): the low-resolution map is read without it."""
    if torch.compiler.is_compiling():
        return u[:, :start], u[:, start:, ::factor, ::factor]
    shared = _SHARED.get()
    if shared is None:
        return _split(u, start, factor)
    key = (id(u), start, factor)
    if key not in shared:  # u is kept with its parts, so its id stays its own
        shared[key] = (u, _split(u, start, factor))
    return shared[key][1]


def _split(u: Tensor, start: int, factor: int) -> tuple[Tensor, Tensor] | None:
    """Both parts contiguous: the convolutions would otherwise copy a strided view on every
    call, forward and backward (once per pass for all the blocks under `sharing_sources`)."""
    low = nearest_source(u[:, start:], factor)
    return None if low is None else (u[:, :start].contiguous(), low.contiguous())


def _tap_selection(kernel: int, padding: int, factor: int, like: Tensor) -> tuple[Tensor, int]:
    """(select[K, k], P): output row f i' + t - P of the transposed conv takes low row i';
    tap j of the k x k conv at output row f i + a reads low row i + (a + j - padding) // f,
    so select[t, j] = 1 for t = a + P - f ((a + j - padding) // f)."""
    taps = [(a - factor * ((a + j - padding) // factor), j)
            for a in range(factor) for j in range(kernel)]
    shift = -min(t for t, _ in taps)
    size = max(t for t, _ in taps) + shift + 1
    if size != factor + 2 * shift:
        raise ValueError(f"conv_over_upsampled: padding {padding} does not keep the size of "
                         f"a {kernel}x{kernel} convolution")
    select = torch.zeros(size, kernel, dtype=like.dtype, device=like.device)
    for t, j in taps:
        select[t + shift, j] = 1
    return select, shift


def conv_over_upsampled(low: Tensor, weight: Tensor, bias: Tensor | None, factor: int,
                        padding: int) -> Tensor:
    """F.conv2d(nearest_factor(low), weight, bias, padding=padding), at low's resolution:
    one transposed convolution (stride f) whose kernel sums the taps that read the same low
    pixel. `weight` is square (k x k) and `padding` keeps the size (k // 2)."""
    select, shift = _tap_selection(weight.shape[-1], padding, factor, weight)
    kernel = torch.einsum("ti,uj,ocij->cotu", select, select, weight)
    return F.conv_transpose2d(low, kernel, bias, stride=factor, padding=shift)
