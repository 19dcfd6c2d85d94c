"""Editing images through the flow's latent space (SRFlow paper, section 4).

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

from cinn_sr.datasets import imresize, scaled_size_mismatch
from cinn_sr.level_maps import as_map_batch, map_at_level, pad_to
from cinn_sr.model import Conditions, SRFlow, check_temperature

Mode = Literal["global", "local", "spatial"]

_COLLECTION_DIMS = {"global": (1, 2, 3), "local": (1,), "spatial": (2, 3)}


def _inside(mask: torch.Tensor) -> torch.Tensor:
    """A mask as bool (float masks: inside where > 0.5)."""
    return mask if mask.dtype == torch.bool else mask > 0.5


def mask_at_level(mask: torch.Tensor, level_hw: tuple[int, int]) -> torch.Tensor:
    """An HR-pixel mask max-pooled to a latent level of size ``level_hw``: bool [B|1, 1, h, w]
    (`cinn_sr.level_maps`)."""
    inside = _inside(as_map_batch(mask, "mask"))
    return map_at_level(inside.float(), level_hw) > 0


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
    """Re-draw the first two moments of each collection of latent entries (paper, section 4).

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
    check_temperature(temperature)
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


def _at_temperature_inside(
    latents: list[torch.Tensor],
    mask: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None,
) -> list[torch.Tensor]:
    """Latents with every entry inside ``mask`` replaced by a fresh N(0, tau^2) draw."""
    check_temperature(temperature)
    redrawn = []
    for z in latents:
        inside = mask_at_level(mask.to(z.device), z.shape[-2:]).expand_as(z)
        fresh = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        redrawn.append(torch.where(inside, temperature * fresh, z))
    return redrawn


def _mask_for_model(model: SRFlow, lr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The HR mask as bool [B|1, 1, H', W'], padded (outside) to the size the model's flow
    works at for ``lr`` (the model pads LR and HR bottom/right to a multiple it needs)."""
    inside = _inside(mask if mask.dim() == 4 else mask[None, None])
    size = model.padded_hr_size(*lr.shape[-2:])
    return pad_to(inside.float(), size, mode="constant") > 0.5


def check_sizes(scale: int, lr: torch.Tensor, *images: torch.Tensor) -> None:
    """Raise ValueError (one line naming the sizes) unless every HR-side tensor (images, masks
    as [H, W] or [B, C, H, W]) is ``scale`` times the LR's height and width."""
    lr_h, lr_w = lr.shape[-2:]
    for image in images:
        h, w = image.shape[-2:]
        expected = scaled_size_mismatch(scale, (lr_h, lr_w), (h, w))
        if expected is not None:
            raise ValueError(
                f"{h}x{w} does not fit the {lr_h}x{lr_w} LR at {scale}x "
                f"(expected {expected[0]}x{expected[1]})"
            )


@torch.no_grad()
def resample_region(
    model: SRFlow,
    lr: torch.Tensor,
    latents: list[torch.Tensor],
    mask: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
    cond: Conditions | None = None,
) -> torch.Tensor:
    """New detail inside a region: re-draw the latents inside ``mask`` (HR pixels, mapped to
    each level by max-pooling) from N(0, tau^2), keep all others, and decode with ``lr``
    (``cond``: its conditions, e.g. a `PreparedLR` for repeated edits)."""
    latents = redraw_region(model, lr, latents, mask, temperature, generator)
    return model.decode(lr, latents, cond=cond)


def redraw_region(
    model: SRFlow,
    lr: torch.Tensor,
    latents: list[torch.Tensor],
    mask: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """The latents of `resample_region`: those inside ``mask`` re-drawn from N(0, tau^2)."""
    check_sizes(model.config.scale, lr, mask)
    return _at_temperature_inside(latents, _mask_for_model(model, lr, mask), temperature,
                                  generator)


@torch.no_grad()
def style_transfer(
    model: SRFlow, source_hr: torch.Tensor, source_lr: torch.Tensor, target_lr: torch.Tensor
) -> torch.Tensor:
    """Decode the source's latents ``z = f(source_hr; g(source_lr))`` with the target's LR
    features: the result has the target's content and the source's detail ("style")."""
    if target_lr.shape != source_lr.shape:
        raise ValueError(
            f"target LR {list(target_lr.shape)} must have the source LR's shape "
            f"{list(source_lr.shape)}"
        )
    check_sizes(model.config.scale, source_lr, source_hr)
    return model.decode(target_lr, model.encode(source_lr, source_hr))


@torch.no_grad()
def content_transfer(
    model: SRFlow,
    lr: torch.Tensor,
    image: torch.Tensor,
    pasted: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    mode: Mode = "local",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Paste ``pasted`` into ``image`` inside ``mask``, encode the composite with ``lr``,
    normalise the latents inside the mask (``mode``, at ``temperature``) and decode: the
    pasted content is redrawn so that it agrees with the LR."""
    check_sizes(model.config.scale, lr, image, pasted, mask)
    composite = torch.where(_inside(mask).to(image.device), pasted, image)
    latents = normalize_latents(
        model.encode(lr, composite),
        mode,
        temperature,
        mask=_mask_for_model(model, lr, mask),
        generator=generator,
    )
    return model.decode(lr, latents)


@torch.no_grad()
def restore(
    model: SRFlow,
    degraded: torch.Tensor,
    lr: torch.Tensor | None = None,
    temperature: float = 0.3,
    mode: Mode = "global",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Restore a degraded HR image (noise, other methods' artefacts): encode it with its LR
    (default: MATLAB-bicubic downscale of ``degraded`` by the model's scale), normalise all
    latents (``mode``, at ``temperature``) and decode."""
    scale = model.config.scale
    if lr is None:
        if degraded.shape[-2] % scale or degraded.shape[-1] % scale:
            raise ValueError(
                f"{degraded.shape[-2]}x{degraded.shape[-1]} is not a multiple of the scale "
                f"{scale}: crop it or give its LR"
            )
        lr = imresize(degraded, 1 / scale)
    check_sizes(scale, lr, degraded)
    latents = normalize_latents(model.encode(lr, degraded), mode, temperature, generator=generator)
    return model.decode(lr, latents)


@torch.no_grad()
def recover_nonfinite(
    model: SRFlow,
    lr: torch.Tensor,
    latents: list[torch.Tensor],
    temperature: float,
    generator: torch.Generator | None = None,
    rounds: int = 3,
    factor: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Decode one sample's latents; while the image has NaN/inf pixels, re-draw the latents
    under them (grown by one block of the coarsest level, 2^L pixels, on every side) at
    ``factor`` times the last temperature, at most ``rounds`` times.

    Returns (image, the HR mask of every pixel whose latents were re-drawn, the last
    temperature used); the image can still hold NaN/inf when the rounds ran out. The
    latents (and ``generator``) stay on the CPU; decoding runs on the LR's device.
    """

    def decode(latents: list[torch.Tensor]) -> torch.Tensor:
        return model.decode(lr, [z.to(lr.device) for z in latents]).float().cpu()

    image = decode(latents)
    redrawn = torch.zeros(image.shape[-2:], dtype=torch.bool)
    reach = 2**model.config.L
    for _ in range(rounds):
        bad = (~torch.isfinite(image)).any(1, keepdim=True).float()
        if not bad.any():
            break
        grown = F.max_pool2d(bad, 2 * reach + 1, stride=1, padding=reach)[0, 0] > 0
        redrawn |= grown
        temperature *= factor
        latents = redraw_region(model, lr, latents, grown, temperature, generator)
        image = decode(latents)
    return image, redrawn, temperature

