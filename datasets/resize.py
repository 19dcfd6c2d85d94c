"""MATLAB-compatible bicubic resizing (``imresize``), batched, in torch, on any device.

MATLAB's ``imresize(I, s, 'bicubic')`` is separable. Along one axis of length ``n_in``
resized to ``n_out`` with factor ``s``, output pixel ``o`` (1-based) sits at the input
coordinate ``u = o / s + (1 - 1 / s) / 2`` and is a weighted sum of the input pixels ``i``
near ``u`` with weights ``k(u - i)``, where ``k`` is the Keys cubic kernel with a = -0.5:

    k(x) = 1.5|x|^3 - 2.5|x|^2 + 1             for |x| <= 1
    k(x) = -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2     for 1 < |x| <= 2,   0 otherwise.

When downscaling (s < 1) the kernel is widened by 1 / s (antialiasing):
``w = s * k(s * (u - i))``. Each output's weights are normalised to sum to one, and taps
outside the image are mirrored back into it (symmetric padding, edge pixel repeated).
Here each axis becomes one dense ``n_out x n_in`` matrix with the mirroring folded in, and
the resize is two matrix products. No rounding happens inside; only uint8 inputs are
rounded (half away from zero, as MATLAB) and clipped at the end.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["cubic", "resize_weights", "imresize"]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _mirror(indices: np.ndarray, n: int) -> np.ndarray:
    """Map 0-based indices outside [0, n) into it by symmetric reflection (edge repeated)."""
    period = np.mod(indices, 2 * n)
    return np.where(period < n, period, 2 * n - 1 - period)


def resize_weights(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """The ``n_out x n_in`` float64 matrix that resizes one axis as MATLAB ``imresize`` does."""
    width = 4.0 / scale if scale < 1 else 4.0
    out_pos = np.arange(1, n_out + 1, dtype=np.float64)
    centre = out_pos / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(centre - width / 2.0)
    taps = int(math.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    distance = centre[:, None] - indices
    weights = scale * cubic(scale * distance) if scale < 1 else cubic(distance)
    weights /= weights.sum(axis=1, keepdims=True)
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.broadcast_to(np.arange(n_out)[:, None], indices.shape)
    np.add.at(matrix, (rows, _mirror(indices.astype(np.int64) - 1, n_in)), weights)
    return matrix


@lru_cache(maxsize=16)
def _cached_weights(
    n_in: int, n_out: int, scale: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    return torch.from_numpy(resize_weights(n_in, n_out, scale)).to(device=device, dtype=dtype)


def _output_length(n_in: int, scale: float) -> int:
    """MATLAB's ``ceil(scale * n_in)``, tolerant of float error (e.g. 300 * (1/3))."""
    return int(math.ceil(n_in * scale - 1e-9))


def _axis_plan(
    in_hw: tuple[int, int], scale: float | None, size: tuple[int, int] | None
) -> list[tuple[int, int, float]]:
    if (scale is None) == (size is None):
        raise ValueError("imresize needs exactly one of scale or size")
    if size is not None:
        out_hw = (int(size[0]), int(size[1]))
        if min(out_hw) < 1:
            raise ValueError(f"imresize output size must be positive, got {size}")
        return [(n, m, m / n) for n, m in zip(in_hw, out_hw, strict=True)]
    if scale <= 0:
        raise ValueError(f"imresize scale must be positive, got {scale}")
    return [(n, max(_output_length(n, scale), 1), float(scale)) for n in in_hw]


def _resize_tensor(
    x: torch.Tensor, scale: float | None, size: tuple[int, int] | None
) -> torch.Tensor:
    """Resize the last two axes (H, W) of a floating tensor."""
    (h_in, h_out, h_scale), (w_in, w_out, w_scale) = _axis_plan(tuple(x.shape[-2:]), scale, size)
    compute_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    rows = _cached_weights(h_in, h_out, h_scale, x.device, compute_dtype)
    cols = _cached_weights(w_in, w_out, w_scale, x.device, compute_dtype)
    y = x.to(compute_dtype)
    y = torch.matmul(y, cols.T) if w_out <= w_in else y
    y = torch.matmul(rows, y)
    y = torch.matmul(y, cols.T) if w_out > w_in else y
    return y.to(x.dtype)


def _round_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """MATLAB's uint8 conversion: clip to [0, 255], round half away from zero (in place)."""
    return x.clamp_(0, 255).add_(0.5).floor_().to(torch.uint8)


def imresize(
    images: torch.Tensor | np.ndarray,
    scale: float | None = None,
    *,
    size: tuple[int, int] | None = None,
) -> torch.Tensor | np.ndarray:
    """Resize images like MATLAB ``imresize(..., 'bicubic')`` (see the module docstring).

    ``scale`` < 1 shrinks (``imresize(x, 1/4)``), > 1 enlarges; the output has
    ``ceil(scale * H) x ceil(scale * W)`` pixels. Alternatively give ``size=(H_out, W_out)``.

    - torch tensors ``[..., H, W]`` (``[C, H, W]``, ``[B, C, H, W]``), any device: floating
      in, same dtype out, no clamping; uint8 in -> uint8 out (computed in float64, rounded).
    - numpy arrays ``H x W`` or ``... x H x W x C`` (HWC, NHWC): uint8 -> uint8 (rounded and
      clipped), floating -> float64.
    """
    if isinstance(images, np.ndarray):
        is_uint8 = images.dtype == np.uint8
        if images.ndim == 2:
            chw = torch.from_numpy(images)
        else:
            chw = torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, -3)))
        out = _resize_tensor(chw.to(torch.float64), scale, size)
        out = _round_to_uint8(out) if is_uint8 else out
        out_np = out.numpy()
        return out_np if images.ndim == 2 else np.ascontiguousarray(np.moveaxis(out_np, -3, -1))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"imresize takes a torch tensor or numpy array, got {type(images)}")
    if images.ndim < 2:
        raise ValueError(f"imresize needs at least 2 dimensions (H, W), got {images.ndim}")
    if images.dtype == torch.uint8:
        return _round_to_uint8(_resize_tensor(images.to(torch.float64), scale, size))
    if not images.is_floating_point():
        raise TypeError(f"imresize takes uint8 or floating tensors, got {images.dtype}")
    return _resize_tensor(images, scale, size)
