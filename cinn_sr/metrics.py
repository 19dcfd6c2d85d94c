"""Image quality metrics under two conventions: the SRFlow paper's (section 5) and BasicSR's.

Every metric takes images as uint8 ``H x W x 3`` RGB arrays; float images (numpy or torch,
``[3, H, W]`` or ``[H, W, 3]``, values in [0, 1]) are first rounded to uint8 (``to_uint8``),
as SR outputs are rounded before they are saved.

- ``"srflow"`` (the SRFlow paper): RGB, no border crop, scikit-image
  ``peak_signal_noise_ratio`` and ``structural_similarity`` with their defaults
  (7 x 7 uniform window, sample covariance), data range 255.
- ``"basicsr"`` (most SR papers): the Y channel of ITU-R BT.601 as MATLAB ``rgb2ycbcr``
  computes it, ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with RGB in [0, 1], kept as a
  float (BasicSR does not round it), ``scale`` pixels cropped from every border, and SSIM
  with an 11 x 11 Gaussian window, sigma 1.5, population covariance (Wang et al. 2004).

PSNR = 10 log10(255^2 / MSE); identical images give ``inf``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from skimage.metrics import structural_similarity

from cinn_sr.datasets import imresize

Convention = Literal["srflow", "basicsr"]
CONVENTIONS: tuple[str, ...] = ("srflow", "basicsr")

__all__ = [
    "CONVENTIONS",
    "Convention",
    "to_uint8",
    "rgb_to_y",
    "psnr",
    "ssim",
    "lr_psnr",
    "diversity",
]


def to_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """An image as uint8 ``H x W x C``: floats in [0, 1] are clipped, scaled by 255 and rounded.

    Accepts ``[C, H, W]`` tensors (C in 1, 3), ``[H, W, C]`` or ``[H, W]`` arrays.
    """
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.ndim == 3:
            array = array.permute(1, 2, 0)
        image = array.numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.dtype == np.uint8:
        return array
    return np.round(np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of a uint8 RGB image as MATLAB ``rgb2ycbcr`` computes it, float64 in
    [16, 235]."""
    rgb = image.astype(np.float64) / 255.0
    return 16.0 + rgb @ np.array([65.481, 128.553, 24.966])


def _check_pair(sr: np.ndarray, hr: np.ndarray) -> None:
    if sr.shape != hr.shape:
        raise ValueError(
            f"image sizes differ: {sr.shape[1]}x{sr.shape[0]} vs {hr.shape[1]}x{hr.shape[0]}"
        )


def _planes(
    sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor, convention: Convention, scale: int
) -> tuple[np.ndarray, np.ndarray]:
    """The two images as float64 arrays the convention compares (RGB, or cropped Y)."""
    if convention not in CONVENTIONS:
        raise ValueError(
            f"unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}"
        )
    a, b = to_uint8(sr), to_uint8(hr)
    _check_pair(a, b)
    if convention == "srflow":
        return a.astype(np.float64), b.astype(np.float64)
    a, b = _luma(a), _luma(b)
    if scale > 0:
        a, b = a[scale:-scale, scale:-scale], b[scale:-scale, scale:-scale]
    return a, b


def _luma(image: np.ndarray) -> np.ndarray:
    return rgb_to_y(image) if image.shape[-1] == 3 else image[..., 0].astype(np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def psnr(
    sr: np.ndarray | torch.Tensor,
    hr: np.ndarray | torch.Tensor,
    convention: Convention = "srflow",
    scale: int = 4,
) -> float:
    """PSNR in dB of ``sr`` against ``hr``; ``scale`` is the border crop of ``"basicsr"``."""
    return _psnr(*_planes(sr, hr, convention, scale))


def ssim(
    sr: np.ndarray | torch.Tensor,
    hr: np.ndarray | torch.Tensor,
    convention: Convention = "srflow",
    scale: int = 4,
) -> float:
    """SSIM of ``sr`` against ``hr`` (mean over the SSIM map and, for RGB, the channels)."""
    a, b = _planes(sr, hr, convention, scale)
    if convention == "srflow":
        channel_axis = 2 if a.shape[-1] > 1 else None
        if channel_axis is None:
            a, b = a[..., 0], b[..., 0]
        return float(structural_similarity(a, b, data_range=255.0, channel_axis=channel_axis))
    return float(
        structural_similarity(
            a, b, data_range=255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
    )


def lr_psnr(sr: np.ndarray | torch.Tensor, lr: np.ndarray | torch.Tensor, scale: int) -> float:
    """LR consistency: RGB PSNR of ``uint8(imresize(sr, 1/scale))`` against the LR input."""
    low = imresize(to_uint8(sr), 1.0 / scale)
    reference = to_uint8(lr)
    _check_pair(low, reference)
    return _psnr(low.astype(np.float64), reference.astype(np.float64))


def diversity(spatial_lpips: torch.Tensor) -> float:
    """NTIRE 2021 diversity score from spatial LPIPS maps ``[N, H, W]`` of N samples vs the HR.

    global = min over samples of the mean of its map; local = mean over pixels of the
    per-pixel min over samples; score = (global - local) / global * 100 (0 when all
    samples are identical, larger when different samples are right in different places).
    """
    maps = spatial_lpips.reshape(spatial_lpips.shape[0], -1).double()
    global_score = maps.mean(dim=1).min()
    local_score = maps.min(dim=0).values.mean()
    if global_score == 0:
        return 0.0
    return float((global_score - local_score) / global_score * 100.0)
