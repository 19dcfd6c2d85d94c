"""Super-resolving whole images: latents drawn once per image, decoded whole or by tiles.

Latents are drawn for the whole (padded) HR image, ``z = temperature * eps`` with one
``eps ~ N(0, I)`` per image and sample shared by all temperatures. Tiled decoding cuts the
LR image into tiles of ``tile`` x ``tile`` LR pixels, each widened by ``overlap`` pixels of
context on every side that has a neighbour, and decodes each widened tile from its own LR
condition and the matching crop of every latent level. Neighbouring tiles then share a band
of ``2 * overlap`` LR pixels; across its central half their HR outputs are blended with a
linear ramp, and its outer halves (next to a tile's edge, where its encoder lacked context)
are dropped. Tile edges sit on multiples of ``config.lr_multiple`` so that every latent level
is cropped on its own grid. Peak memory depends on the tile size, not the image size
(beyond the latents and the output themselves).

``sample_files`` is what ``cinn-sr sample`` runs: image files in, PNGs out; grayscale inputs
give grayscale outputs and an alpha channel is upscaled (``imresize``) and kept.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from cinn_sr.datasets import (
    ImageReadError,
    OptionError,
    imresize,
    list_images,
    read_image,
    to_tensor,
    write_image,
)
from cinn_sr.datasets.atomic import atomic_path
from cinn_sr.edit_files import read_grey
from cinn_sr.model import DEFAULT_TEMPERATURE, SRFlow
from cinn_sr.uncertainty import uncertainty_images

__all__ = [
    "Window",
    "tile_windows",
    "draw_noise",
    "decode_tiled",
    "super_resolve",
    "SampleSummary",
    "output_name",
    "expand_inputs",
    "sample_files",
    "nonfinite_fraction",
    "describe_nonfinite",
    "NonFiniteOutputError",
    "NONFINITE_REMEDY",
    "SAMPLE_TEMPERATURE",
]

SAMPLE_TEMPERATURE = 0.7
"""`cinn-sr sample`'s default temperature: the best trade-off of LPIPS and LR-PSNR measured
for the shipped small-4x model (its model card, cinn_sr/models/small-4x.md)."""
NONFINITE_REMEDY = 'lower the temperature, or use a model trained with scale_fn = "softclamp"'


class NonFiniteOutputError(ValueError):
    """A model output has NaN or inf pixels: it is never written or scored."""


def nonfinite_fraction(images: Tensor) -> Tensor:
    """Per image of ``[N, C, H, W]``: the fraction of its pixels with a NaN or inf channel."""
    return (~torch.isfinite(images)).any(dim=1).flatten(1).double().mean(1)


def describe_nonfinite(items: Sequence[tuple[str, float]], shown: int = 5) -> str:
    """``a.png (70.1 %), b.png (3.0 %)`` for (name, fraction) pairs, the first ``shown``."""
    text = ", ".join(f"{name} ({100 * fraction:.1f} %)" for name, fraction in items[:shown])
    return text + (f" and {len(items) - shown} more" if len(items) > shown else "")


@dataclass(frozen=True)
class Window:
    """One tile along one axis, in LR pixels: decoded over [start, stop), owning
    [core_start, core_stop)."""

    start: int
    stop: int
    core_start: int
    core_stop: int


def tile_windows(length: int, tile: int, overlap: int, multiple: int = 1) -> list[Window]:
    """Tiles covering ``range(length)``; ``tile`` and ``overlap`` are rounded up to ``multiple``."""
    if tile < 1 or overlap < 0:
        raise ValueError(f"tile must be >= 1 and overlap >= 0, got {tile} and {overlap}")
    tile = -(-tile // multiple) * multiple
    overlap = -(-overlap // multiple) * multiple
    windows = []
    for core_start in range(0, length, tile):
        core_stop = min(core_start + tile, length)
        windows.append(
            Window(
                max(core_start - overlap, 0),
                min(core_stop + overlap, length),
                core_start,
                core_stop,
            )
        )
    return windows


def _ramp(window: Window, scale: int) -> Tensor:
    """HR weights of one window along one axis: 1 on its core, and across each boundary with
    a neighbour a linear ramp from 1 to 0 over the central half of the shared band (the
    outer half, nearest the tile edge where the condition lacks context, gets weight 0)."""
    positions = torch.arange(window.start * scale, window.stop * scale, dtype=torch.float64) + 0.5
    weight = torch.ones_like(positions)
    left, right = window.core_start - window.start, window.stop - window.core_stop
    if left > 0:
        rise = (positions - (window.core_start - left / 2) * scale) / (left * scale)
        weight = torch.minimum(weight, rise.clamp(0, 1))
    if right > 0:
        fall = ((window.core_stop + right / 2) * scale - positions) / (right * scale)
        weight = torch.minimum(weight, fall.clamp(0, 1))
    return weight.float()


def draw_noise(
    model: SRFlow, lr_h: int, lr_w: int, n: int, generator: torch.Generator | None = None
) -> list[Tensor]:
    """``eps ~ N(0, I)`` for n samples of one LR image of lr_h x lr_w, on the CPU (so a seed
    gives the same images on every device); latents are ``temperature * eps``."""
    s = model.config.scale
    return [
        torch.randn(n, *shape, generator=generator)
        for shape in model.latent_shapes(lr_h * s, lr_w * s)
    ]


def decode_tiled(
    model: SRFlow, lr: Tensor, latents: Sequence[Tensor], tile: int, overlap: int = 16
) -> Tensor:
    """``model.decode(lr, latents)`` for one LR image ``[1, C, h, w]`` by tiles (module docstring).

    ``latents`` are whole-image latents ``[n, ...]`` (on any device); returns ``[n, C, s*h, s*w]``
    on the CPU.
    """
    if lr.shape[0] != 1:
        raise ValueError(f"decode_tiled takes one LR image, got a batch of {lr.shape[0]}")
    s, multiple = model.config.scale, model.config.lr_multiple
    h, w = lr.shape[-2:]
    padded_h, padded_w = (size // s for size in model.padded_hr_size(h, w))
    n = latents[0].shape[0]
    device = next(model.parameters()).device
    output = torch.zeros(n, lr.shape[1], h * s, w * s)
    total_weight = torch.zeros(h * s, w * s)
    for rows in tile_windows(h, tile, overlap, multiple):
        row_weight = _ramp(rows, s)
        for cols in tile_windows(w, tile, overlap, multiple):
            lr_tile = lr[..., rows.start : rows.stop, cols.start : cols.stop].to(device)
            crops = [
                _crop_latent(z, rows, cols, padded_h, padded_w, h, w).to(device) for z in latents
            ]
            with torch.inference_mode():
                hr_tile = model.decode(lr_tile, crops).float().cpu()
            weight = row_weight[:, None] * _ramp(cols, s)[None, :]
            region = (slice(rows.start * s, rows.stop * s), slice(cols.start * s, cols.stop * s))
            output[(..., *region)] += hr_tile * weight
            total_weight[region] += weight
    return output / total_weight


def _crop_latent(
    z: Tensor, rows: Window, cols: Window, padded_h: int, padded_w: int, h: int, w: int
) -> Tensor:
    """The part of a whole-image latent under an LR window (padded like the model pads it)."""
    factor_h, factor_w = z.shape[-2] / padded_h, z.shape[-1] / padded_w
    stop_h = padded_h if rows.stop == h else rows.stop
    stop_w = padded_w if cols.stop == w else cols.stop
    return z[
        ...,
        round(rows.start * factor_h) : round(stop_h * factor_h),
        round(cols.start * factor_w) : round(stop_w * factor_w),
    ]


def super_resolve(
    model: SRFlow,
    lr: Tensor,
    temperatures: Sequence[float] = (DEFAULT_TEMPERATURE,),
    n: int = 1,
    generator: torch.Generator | None = None,
    tile: int | None = None,
    overlap: int = 16,
    temperature_map: Tensor | None = None,
) -> dict[float, Tensor]:
    """n SR samples of one LR image ``[1, C, h, w]`` (in [0, 1]) per temperature:
    ``{temperature: [n, C, s*h, s*w]}`` clamped to [0, 1], on the CPU.

    The same noise serves every temperature; the n samples of one temperature are decoded
    as one batch. With ``tile`` the image is decoded by tiles (``decode_tiled``), otherwise
    whole, with the encoder run once for all temperatures. A ``temperature_map`` (HR-sized,
    values in [0, 1]) makes each temperature the maximum: pixel p is sampled at
    ``temperature * map[p]`` (``SRFlow.sample``'s mapping onto the latent levels).
    """
    noise = draw_noise(model, lr.shape[-2], lr.shape[-1], n, generator)
    device = next(model.parameters()).device
    results: dict[float, Tensor] = {}
    cond = None
    for temperature in temperatures:
        level_t = model.level_temperatures(
            float(temperature) if temperature_map is None else temperature_map * temperature, lr
        )
        latents = [eps * t for eps, t in zip(noise, level_t, strict=True)]
        if tile is not None:
            sr = decode_tiled(model, lr, latents, tile, overlap)
        else:
            with torch.inference_mode():
                lr_device = lr.to(device)
                cond = cond if cond is not None else model.condition(lr_device)
                sr = model.decode(lr_device, [z.to(device) for z in latents], cond=cond)
        results[float(temperature)] = sr.float().cpu().clamp(0, 1)
    return results


@dataclass
class SampleSummary:
    """What ``sample_files`` wrote."""

    inputs: int
    temperatures: tuple[float, ...]
    samples: int
    written: list[Path]
    out_dir: Path
    skipped: list[str]
    nonfinite: list[tuple[str, float]] = field(default_factory=list)
    """Samples not written because of NaN/inf pixels: (output name, fraction of pixels)."""
    uncertainty: list[Path] = field(default_factory=list)
    """The mean, std PNG and std .npy files of `--uncertainty`."""

    def line(self) -> str:
        temps = ", ".join(f"{t:g}" for t in self.temperatures)
        line = (
            f"wrote {len(self.written)} images to {self.out_dir} ({_count(self.inputs, 'input')} x "
            f"{_count(len(self.temperatures), 'temperature')} ({temps}) x "
            f"{_count(self.samples, 'sample')})"
        )
        if self.uncertainty:
            count = len(self.uncertainty) // 3
            line += f"; {_count(count, 'uncertainty map')} (_mean.png, _std.png, _std.npy)"
        if self.skipped:
            line += (
                f"; skipped {_count(len(self.skipped), 'unreadable input')}: "
                + "; ".join(self.skipped)
            )
        if self.nonfinite:
            line += (
                f"; not written, with NaN/inf pixels: {_count(len(self.nonfinite), 'sample')} "
                f"({describe_nonfinite(self.nonfinite)})"
            )
        return line


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _tag(temperature: float, mapped: bool) -> str:
    return f"tmax{temperature:g}" if mapped else f"t{temperature:g}"


def output_name(stem: str, temperature: float, index: int, mapped: bool = False) -> str:
    """``{stem}_t{temperature}_s{index}.png``, the temperature written shortest (0.9, 1, 0);
    ``_tmax{temperature}`` when a temperature map scales it."""
    return f"{stem}_{_tag(temperature, mapped)}_s{index}.png"


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files given directly or found directly inside given folders; ValueError when two
    inputs share a stem (their outputs would collide) or nothing is found."""
    files: list[Path] = []
    for item in map(Path, inputs):
        files.extend(list_images(item) if item.is_dir() else [item])
    if not files:
        raise ValueError("no input images found")
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen and seen[path.stem] != path:
            raise ValueError(f"{seen[path.stem]} and {path} would write the same outputs")
        seen[path.stem] = path
    return list(seen.values())


def _read_with_mode(path: Path) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """The image as RGB uint8 (``read_image``), whether it is grayscale, and its alpha channel."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*alpha channel dropped")
        rgb = read_image(path)
    try:
        with Image.open(path) as image:
            bands = image.getbands()
            if image.mode == "P" and "transparency" in image.info:
                image, bands = image.convert("RGBA"), ("R", "G", "B", "A")
            alpha = np.array(image.getchannel("A")) if "A" in bands else None
    except OSError:  # read by read_image through another reader (e.g. TIFF)
        return rgb, False, None
    if alpha is not None and alpha.dtype != np.uint8:
        alpha = None
    return rgb, bands[0] in ("L", "I", "F", "1"), alpha


def _as_output(sr: Tensor, gray: bool, alpha: np.ndarray | None, scale: int) -> np.ndarray:
    """An SR sample as the uint8 image to save: gray inputs give gray outputs (channel mean),
    an alpha channel is upscaled with ``imresize`` and kept."""
    image = np.floor(sr.permute(1, 2, 0).double().numpy() * 255 + 0.5).astype(np.uint8)
    if gray:
        image = np.floor(image.mean(axis=2) + 0.5).astype(np.uint8)
    if alpha is not None:
        big_alpha = imresize(alpha, scale)[: image.shape[0], : image.shape[1]]
        image = (
            np.dstack([image, big_alpha])
            if image.ndim == 3
            else np.dstack([image, image, image, big_alpha])
        )
    return image


def sample_files(
    model: SRFlow,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    temperatures: Sequence[float] = (DEFAULT_TEMPERATURE,),
    n: int = 1,
    seed: int = 0,
    tile: int | None = None,
    overlap: int = 16,
    progress: bool = True,
    temperature_map: str | os.PathLike | None = None,
    uncertainty: bool = False,
) -> SampleSummary:
    """Super-resolve image files (or folders of them) into ``out_dir`` as ``output_name`` PNGs.

    Each image's noise comes from ``torch.Generator().manual_seed(seed)``, so a seed gives
    the same outputs for an image whatever else is sampled with it. Unreadable files are
    skipped and named in the summary; none readable at all is an ``ImageReadError``.
    A sample with NaN or inf pixels is not written; the summary names it and the fraction.

    ``temperature_map``: a grey image of the SR size; grey g samples a pixel at
    ``temperature * g / 255``. ``uncertainty`` (n >= 2): per input and temperature also the
    mean image ``_mean.png``, the per-pixel standard deviation as a colour image
    ``_std.png`` (viridis, scaled to its maximum) and its values ``_std.npy``
    (`cinn_sr.uncertainty`).
    """
    if uncertainty and n < 2:
        raise OptionError(f"the uncertainty needs at least 2 samples per image, got {n}")
    files = expand_inputs(inputs)
    temperatures = tuple(dict.fromkeys(float(t) for t in temperatures))
    relative = read_grey(temperature_map)[None, None] if temperature_map is not None else None
    out_dir = Path(out_dir)
    model.eval()
    written: list[Path] = []
    skipped: list[str] = []
    nonfinite: list[tuple[str, float]] = []
    maps: list[Path] = []
    for path in tqdm(files, desc="sample", unit="image", disable=not progress):
        try:
            rgb, gray, alpha = _read_with_mode(path)
        except ImageReadError as error:
            skipped.append(str(error))
            continue
        lr = to_tensor(rgb)[None]
        if relative is not None:
            _check_map_fits(relative, lr, model.config.scale, temperature_map, path)
        results = super_resolve(
            model, lr, temperatures, n, torch.Generator().manual_seed(seed), tile, overlap,
            relative,
        )
        for temperature, batch in results.items():
            fractions = nonfinite_fraction(batch)
            for index, sr in enumerate(batch):
                name = output_name(path.stem, temperature, index, relative is not None)
                if fractions[index] > 0:
                    nonfinite.append((name, float(fractions[index])))
                    continue
                image = _as_output(sr, gray, alpha, model.config.scale)
                written.append(write_image(out_dir / name, image))
            if uncertainty and not bool(fractions.any()):
                name = f"{path.stem}_{_tag(temperature, relative is not None)}"
                maps += _write_uncertainty(out_dir, name, batch)
    if len(skipped) == len(files):
        raise ImageReadError(f"no readable input image: {'; '.join(skipped)}")
    return SampleSummary(
        len(files) - len(skipped), temperatures, n, written, out_dir, skipped, nonfinite, maps
    )


def _check_map_fits(relative: Tensor, lr: Tensor, scale: int, map_path, image_path) -> None:
    expected = (lr.shape[-2] * scale, lr.shape[-1] * scale)
    if tuple(relative.shape[-2:]) != expected:
        raise ValueError(
            f"temperature map {map_path} is {relative.shape[-2]}x{relative.shape[-1]}, but the "
            f"SR image of {Path(image_path).name} is {expected[0]}x{expected[1]}"
        )


def _write_uncertainty(out_dir: Path, name: str, batch: Tensor) -> list[Path]:
    """`{name}_mean.png`, `{name}_std.png` and `{name}_std.npy` of one input's samples."""
    mean, coloured, raw = uncertainty_images(batch)
    paths = [write_image(out_dir / f"{name}_mean.png", mean),
             write_image(out_dir / f"{name}_std.png", coloured)]
    with atomic_path(out_dir / f"{name}_std.npy") as temp, open(temp, "wb") as handle:
        np.save(handle, raw)
    return [*paths, out_dir / f"{name}_std.npy"]
