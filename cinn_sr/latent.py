"""Editing images through the flow's latent space (SRFlow paper, section 4; SPEC 1.5).

Encoding an image ``y`` with an LR ``x`` gives latents ``z = f(y; g(x))``, one tensor per
level, each standard normal under the model. Decoding modified latents, or the same latents
with another LR, edits the image. Masks are given in HR pixels, as a bool or float tensor
(float: inside where > 0.5) shaped [H, W] or [B, 1, H, W]; a latent level of size h x w gets
the mask by max-pooling over the (H/h) x (W/w) HR pixels each latent entry covers, so an entry
is inside when any of its HR pixels is.
"""

from typing import Literal

import torch
import torch.nn.functional as F

Mode = Literal["global", "local", "spatial"]

_COLLECTION_DIMS = {"global": (1, 2, 3), "local": (1,), "spatial": (2, 3)}


def mask_at_level(mask: torch.Tensor, level_hw: tuple[int, int]) -> torch.Tensor:
    """An HR-pixel mask max-pooled to a latent level of size ``level_hw``: bool [B|1, 1, h, w]."""
    if mask.dim() == 2:
        mask = mask[None, None]
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be [H, W] or [B, 1, H, W], got {list(mask.shape)}")
    inside = mask if mask.dtype == torch.bool else mask > 0.5
    (hr_h, hr_w), (h, w) = inside.shape[-2:], level_hw
    if hr_h % h or hr_w % w:
        raise ValueError(f"mask of {hr_h}x{hr_w} HR pixels does not map onto a {h}x{w} latent level")
    if (hr_h // h, hr_w // w) == (1, 1):
        return inside
    return F.max_pool2d(inside.float(), kernel_size=(hr_h // h, hr_w // w)) > 0


def _masked_mean_and_std(
    values: torch.Tensor, weight: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-collection count N, mean and unbiased std (N - 1 in the denominator) of the entries
    where ``weight`` is 1; reduced over ``dims`` with keepdim."""
    count = weight.sum(dims, keepdim=True)
    mean = (weight * values).sum(dims, keepdim=True) / count.clamp_min(1)
    var = (weight * (values - mean) ** 2).sum(dims, keepdim=True) / (count - 1).clamp_min(1)
    return count, mean, var.sqrt()


def normalize_latents(
    latents: list[torch.Tensor],
    mode: Mode,
    temperature: float,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Re-draw the first two moments of each collection of latent entries (SPEC 1.5).

    For a collection Z~ of N entries with empirical mean m~ and std s~ (N - 1 denominator),
    draw ``m ~ N(0, tau^2 / N)`` and ``s^2 ~ Gamma((N - 1) / 2, scale 2 tau^2 / (N - 1))`` and
    set ``z <- (s / s~)(z - m~) + m``: the collection then has the mean and variance that N
    independent N(0, tau^2) entries would have. Both are drawn as the sample mean and sample
    std of N fresh N(0, tau^2) entries, which have exactly those distributions.
    Collections, per image: ``global`` all entries of a level, ``local`` all channels at one
    spatial position, ``spatial`` one channel over all positions of a level. With ``mask``
    (HR pixels, see the module docstring) only entries inside it belong to collections and
    only they change. A one-entry collection becomes its drawn mean.
    """
    if mode not in _COLLECTION_DIMS:
        raise ValueError(f"mode must be one of {sorted(_COLLECTION_DIMS)}, got {mode!r}")
    dims = _COLLECTION_DIMS[mode]
    normalized = []
    for z in latents:
        if mask is None:
            inside = torch.ones_like(z, dtype=torch.bool)
        else:
            inside = mask_at_level(mask.to(z.device), z.shape[-2:]).expand_as(z)
        weight = inside.to(z.dtype)
        count, mean, std = _masked_mean_and_std(z, weight, dims)
        fresh = temperature * torch.randn(
            z.shape, generator=generator, device=z.device, dtype=z.dtype
        )
        _, new_mean, new_std = _masked_mean_and_std(fresh, weight, dims)
        gain = torch.where(count > 1, new_std / std.clamp_min(1e-12), torch.zeros_like(std))
        normalized.append(torch.where(inside, gain * (z - mean) + new_mean, z))
    return normalized
