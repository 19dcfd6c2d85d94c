"""Super-resolving whole images: noise drawn by position blocks, decoded whole or by tiles.

The latents are ``z = temperature * eps`` with one ``eps ~ N(0, I)`` per image and sample,
shared by all temperatures. ``eps`` is cut into blocks that each cover ``NOISE_BLOCK`` x
``NOISE_BLOCK`` LR pixels (rounded up to the coarsest latent grid, ``config.lr_multiple``)
on every latent level, and each block is drawn from its own generator, seeded by a hash of
(key, sample, level, block row, block column), the key being one draw of the caller's
generator (``BlockNoise``). The noise is thus a pure function of the position: a tile
draws only the blocks it covers, whole-image sampling assembles the same blocks, and a seed
gives the same image whatever the tiling.

Tiled decoding cuts the LR image into tiles of ``tile`` x ``tile`` LR pixels, each widened
by ``overlap`` pixels of context on every side that has a neighbour, and decodes each
widened tile from its own LR condition and its window of the noise (and of a temperature
map). Neighbouring tiles then share a band of ``2 * overlap`` LR pixels; across its central
half their HR outputs are blended with a linear ramp, and its outer halves (next to a
tile's edge, where its encoder lacked context) are dropped. Tile edges sit on multiples of
``config.lr_multiple`` so that every latent level is cropped on its own grid. The output is
assembled one row of tiles at a time (``decode_strips``) and, in ``sample_files``, written
as uint8 PNG rows as they are finished (``PngRowWriter``): peak memory depends on the tile
size and the image width, not the image size (beyond the LR image itself).

``sample_files`` is what ``cinn-sr sample`` runs: image files in, PNGs out; grayscale inputs
give grayscale outputs and an alpha channel is upscaled (``imresize``) and kept.
"""

from __future__ import annotations

import hashlib
import os
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
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
    PngRowWriter,
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
    "NOISE_BLOCK",
    "noise_key",
    "block_seed",
    "BlockNoise",
    "draw_noise",
    "decode_strips",
    "decode_tiled",
    "sample_strips",
    "super_resolve",
    "to_uint8_rows",
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


NOISE_BLOCK = 32
"""LR pixels per side of one noise block (rounded up to ``config.lr_multiple``)."""


def noise_key(generator: torch.Generator | None = None) -> int:
    """The 63-bit key of one image's noise: one draw of ``generator`` (the global RNG when
    None), so that a generator seeded alike gives the same noise."""
    return int(torch.randint(2**63 - 1, (), generator=generator))


def block_seed(key: int, sample: int, level: int, row: int, col: int) -> int:
    """A well-mixed 63-bit seed of one noise block (blake2b of its coordinates): blocks with
    nearby coordinates or keys get unrelated streams."""
    data = struct.pack("<5q", key, sample, level, row, col)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


@dataclass(frozen=True)
class BlockNoise:
    """``eps ~ N(0, I)`` of one LR image's latents as a pure function of (key, sample, level,
    position) (module docstring): any window of it is drawn on its own, on the CPU."""

    key: int
    n: int
    lr_size: tuple[int, int]
    padded_lr_size: tuple[int, int]
    block: int
    """LR pixels per side of one block."""
    block_shapes: tuple[tuple[int, int, int], ...]
    """(C, h, w) of one block at each latent level."""

    @classmethod
    def for_image(
        cls, model: SRFlow, lr_h: int, lr_w: int, n: int,
        generator: torch.Generator | None = None,
    ) -> BlockNoise:
        """The noise of n samples of an LR image of lr_h x lr_w, keyed by ``generator``."""
        s, multiple = model.config.scale, model.config.lr_multiple
        block = -(-NOISE_BLOCK // multiple) * multiple
        padded = tuple(size // s for size in model.padded_hr_size(lr_h, lr_w))
        shapes = tuple(model.latent_shapes(block * s, block * s))
        return cls(noise_key(generator), n, (lr_h, lr_w), padded, block, shapes)

    def whole(self) -> list[Tensor]:
        """The whole image's eps, one ``[n, C, h, w]`` per level (``model.latent_shapes``)."""
        h, w = self.lr_size
        return self.window(Window(0, h, 0, h), Window(0, w, 0, w))

    def window(self, rows: Window, cols: Window) -> list[Tensor]:
        """The eps under an LR window (its latent crop, padded like the model pads the
        image): the blocks it touches are drawn and cut to it."""
        (h, w), (padded_h, padded_w) = self.lr_size, self.padded_lr_size
        stop_h = padded_h if rows.stop == h else rows.stop
        stop_w = padded_w if cols.stop == w else cols.stop
        return [
            self._level(level, (rows.start, stop_h), (cols.start, stop_w))
            for level in range(len(self.block_shapes))
        ]

    def _level(self, level: int, rows: tuple[int, int], cols: tuple[int, int]) -> Tensor:
        """eps of one level over LR rows and columns [start, stop) (multiples of the
        coarsest latent grid, or the padded edge)."""
        channels, size_h, size_w = self.block_shapes[level]
        top, bottom = (value * size_h // self.block for value in rows)
        left, right = (value * size_w // self.block for value in cols)
        first_row, first_col = top // size_h, left // size_w
        block_rows = range(first_row, -(-bottom // size_h))
        block_cols = range(first_col, -(-right // size_w))
        eps = torch.empty(self.n, channels, len(block_rows) * size_h, len(block_cols) * size_w)
        for sample in range(self.n):
            for i, row in enumerate(block_rows):
                for j, col in enumerate(block_cols):
                    seed = block_seed(self.key, sample, level, row, col)
                    generator = torch.Generator().manual_seed(seed)
                    eps[sample, :, i * size_h : (i + 1) * size_h, j * size_w : (j + 1) * size_w] = (
                        torch.randn(channels, size_h, size_w, generator=generator)
                    )
        row0, col0 = first_row * size_h, first_col * size_w
        return eps[..., top - row0 : bottom - row0, left - col0 : right - col0].contiguous()


def draw_noise(
    model: SRFlow, lr_h: int, lr_w: int, n: int, generator: torch.Generator | None = None
) -> list[Tensor]:
    """``eps ~ N(0, I)`` for n samples of one LR image of lr_h x lr_w, on the CPU (so a seed
    gives the same images on every device), assembled from its position-seeded blocks
    (``BlockNoise``); latents are ``temperature * eps``."""
    return BlockNoise.for_image(model, lr_h, lr_w, n, generator).whole()


TileLatents = Callable[[Window, Window], list[list[Tensor]]]
"""For an LR window (rows, columns): the latents of each decode, ``[[z per level], ...]``."""


def decode_strips(
    model: SRFlow,
    lr: Tensor,
    tile_latents: TileLatents,
    tile: int | None,
    overlap: int = 16,
    progress: bool = False,
) -> Iterator[tuple[int, Tensor]]:
    """Decode one LR image ``[1, C, h, w]`` by tiles (whole when ``tile`` is None) and yield
    the HR output a strip of finished rows at a time: (first HR row, ``[B, C, rows, s*w]``)
    on the CPU, not clamped, B the decodes of ``tile_latents`` one after the other.

    Only one row of tiles is held (as float), plus the rows it shares with the next: each
    tile is added with the separable weights ``_ramp(rows) x _ramp(cols)`` and the finished
    rows divided by their sums, so no whole-image buffer is made.
    """
    if lr.shape[0] != 1:
        raise ValueError(f"decoding by tiles takes one LR image, got a batch of {lr.shape[0]}")
    s, multiple = model.config.scale, model.config.lr_multiple
    h, w = lr.shape[-2:]
    if tile is None:  # one decode: no weights to add and divide by (they would all be 1)
        rows, cols = Window(0, h, 0, h), Window(0, w, 0, w)
        yield 0, _decode_tile(model, lr, rows, cols, tile_latents(rows, cols))
        return
    row_windows = tile_windows(h, tile, overlap, multiple)
    col_windows = tile_windows(w, tile, overlap, multiple)
    col_weights = [_ramp(cols, s) for cols in col_windows]
    col_total = _weight_sum(col_windows, col_weights, w * s, s)
    row_total = _weight_sum(row_windows, [_ramp(rows, s) for rows in row_windows], h * s, s)
    bar = tqdm(total=len(row_windows) * len(col_windows), desc="tiles", unit="tile",
               leave=False, disable=not progress)
    carry = None
    with bar:
        for index, rows in enumerate(row_windows):
            strip = _decode_row(model, lr, rows, col_windows, col_weights, tile_latents, bar)
            if carry is not None:
                strip[..., : carry.shape[-2], :] += carry
            last = index + 1 == len(row_windows)
            done = h * s if last else row_windows[index + 1].start * s
            finished = done - rows.start * s
            weight = row_total[rows.start * s : done, None] * col_total[None, :]
            done_rows = strip[..., :finished, :] / weight
            carry = None if last else strip[..., finished:, :].clone()
            del strip  # the next row of tiles starts from its carry alone
            yield rows.start * s, done_rows


def _decode_row(
    model: SRFlow,
    lr: Tensor,
    rows: Window,
    col_windows: Sequence[Window],
    col_weights: Sequence[Tensor],
    tile_latents: TileLatents,
    bar: tqdm,
) -> Tensor:
    """One row of tiles, each weighted by its ramps and added into ``[B, C, rows, s*w]``."""
    s = model.config.scale
    row_weight = _ramp(rows, s)
    strip = None
    for cols, col_weight in zip(col_windows, col_weights, strict=True):
        hr = _decode_tile(model, lr, rows, cols, tile_latents(rows, cols))
        if strip is None:
            strip = hr.new_zeros(*hr.shape[:2], (rows.stop - rows.start) * s, lr.shape[-1] * s)
        strip[..., cols.start * s : cols.stop * s] += hr * (row_weight[:, None] * col_weight)
        bar.update()
    return strip


def _decode_tile(
    model: SRFlow, lr: Tensor, rows: Window, cols: Window, groups: list[list[Tensor]]
) -> Tensor:
    """The HR outputs of an LR window for each latent list of ``groups``, concatenated on the
    CPU; the encoder runs once for all of them, and the flow's condition-only work too when
    there are several (its cache costs memory that one decode would not win back)."""
    device = next(model.parameters()).device
    lr_tile = lr[..., rows.start : rows.stop, cols.start : cols.stop].to(device)
    with torch.inference_mode():
        cond = model.prepare(lr_tile) if len(groups) > 1 else model.condition(lr_tile)
        return torch.cat([
            model.decode(lr_tile, [z.to(device) for z in latents], cond=cond).float().cpu()
            for latents in groups
        ])


def _weight_sum(windows: Sequence[Window], weights: Sequence[Tensor], size: int, s: int) -> Tensor:
    """The sum of the windows' HR weights along one axis (``size`` HR pixels)."""
    total = torch.zeros(size)
    for window, weight in zip(windows, weights, strict=True):
        total[window.start * s : window.stop * s] += weight
    return total


def _assemble(strips: Iterator[tuple[int, Tensor]], hr_h: int) -> Tensor:
    """The strips of ``decode_strips`` as one ``[B, C, hr_h, W]`` tensor."""
    output = None
    for start, strip in strips:
        if output is None:
            output = strip.new_empty(*strip.shape[:2], hr_h, strip.shape[-1])
        output[..., start : start + strip.shape[-2], :] = strip
    return output


def decode_tiled(
    model: SRFlow, lr: Tensor, latents: Sequence[Tensor], tile: int, overlap: int = 16
) -> Tensor:
    """``model.decode(lr, latents)`` for one LR image ``[1, C, h, w]`` by tiles (module docstring).

    ``latents`` are whole-image latents ``[n, ...]`` (on any device); returns ``[n, C, s*h, s*w]``
    on the CPU.
    """
    h, w = lr.shape[-2:]
    padded_h, padded_w = (size // model.config.scale for size in model.padded_hr_size(h, w))

    def crops(rows: Window, cols: Window) -> list[list[Tensor]]:
        return [[_crop_latent(z, rows, cols, padded_h, padded_w, h, w) for z in latents]]

    strips = decode_strips(model, lr, crops, tile, overlap)
    return _assemble(strips, h * model.config.scale)


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


def sample_strips(
    model: SRFlow,
    lr: Tensor,
    temperatures: Sequence[float] = (DEFAULT_TEMPERATURE,),
    n: int = 1,
    generator: torch.Generator | None = None,
    tile: int | None = None,
    overlap: int = 16,
    temperature_map: Tensor | None = None,
    progress: bool = False,
) -> Iterator[tuple[int, Tensor]]:
    """``super_resolve``'s samples a strip of HR rows at a time (``decode_strips``): (first
    row, ``[len(temperatures) * n, C, rows, s*w]``), temperature after temperature, not
    clamped. Each tile draws only the noise blocks it covers and crops the temperature map."""
    s = model.config.scale
    noise = BlockNoise.for_image(model, lr.shape[-2], lr.shape[-1], n, generator)

    def tile_latents(rows: Window, cols: Window) -> list[list[Tensor]]:
        eps = noise.window(rows, cols)
        lr_tile = lr[..., rows.start : rows.stop, cols.start : cols.stop]
        relative = None
        if temperature_map is not None:
            region = (slice(rows.start * s, rows.stop * s), slice(cols.start * s, cols.stop * s))
            relative = temperature_map[(..., *region)]
        groups = []
        for temperature in temperatures:
            value = float(temperature) if relative is None else relative * temperature
            level_t = model.level_temperatures(value, lr_tile)
            groups.append([e * t for e, t in zip(eps, level_t, strict=True)])
        return groups

    yield from decode_strips(model, lr, tile_latents, tile, overlap, progress)


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

    The same noise (``draw_noise``) serves every temperature; the n samples of one
    temperature are decoded as one batch, the encoder run once per tile (or once for the
    whole image without ``tile``) for all temperatures. A ``temperature_map`` (HR-sized,
    values in [0, 1]) makes each temperature the maximum: pixel p is sampled at
    ``temperature * map[p]`` (``SRFlow.sample``'s mapping onto the latent levels).
    ``sample_strips`` gives the same samples without holding them whole.
    """
    temperatures = [float(t) for t in temperatures]
    strips = sample_strips(model, lr, temperatures, n, generator, tile, overlap, temperature_map)
    sr = _assemble(strips, lr.shape[-2] * model.config.scale).clamp_(0, 1)
    return {t: sr[i * n : (i + 1) * n] for i, t in enumerate(temperatures)}


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
    recovered: list[tuple[str, float, float]] = field(default_factory=list)
    """Samples written after `--recover`: (name, fraction of pixels re-drawn, last
    temperature)."""

    def line(self) -> str:
        temps = ", ".join(f"{t:g}" for t in self.temperatures)
        line = (
            f"wrote {_count(len(self.written), 'image')} to {self.out_dir} "
            f"({_count(self.inputs, 'input')} x "
            f"{_count(len(self.temperatures), 'temperature')} ({temps}) x "
            f"{_count(self.samples, 'sample')})"
        )
        if self.recovered:
            items = ", ".join(f"{name}: {100 * part:.1f} % of its pixels re-drawn, down to "
                              f"t {last:g}" for name, part, last in self.recovered[:5])
            more = len(self.recovered) - 5
            line += (f"; recovered {_count(len(self.recovered), 'sample')} ({items}"
                     + (f" and {more} more" if more > 0 else "") + ")")
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


UINT8_ROWS = 64
"""HR rows converted to uint8 at once (bounds the float64 temporaries)."""


def to_uint8_rows(strip: Tensor) -> tuple[np.ndarray, Tensor]:
    """Float rows ``[B, C, r, W]`` as uint8 ``[B, r, W, C]`` (clamped to [0, 1], rounded half
    up) and the number of non-finite pixels of each image ``[B]`` (any bad channel), counted
    before the conversion; those pixels become 0, so such an image must not be written."""
    bad = (~torch.isfinite(strip)).any(dim=1).flatten(1).sum(1)
    out = np.empty((strip.shape[0], strip.shape[2], strip.shape[3], strip.shape[1]), np.uint8)
    for start in range(0, strip.shape[2], UINT8_ROWS):
        part = strip[:, :, start : start + UINT8_ROWS].nan_to_num(0.0).clamp(0, 1)
        values = part.permute(0, 2, 3, 1).double().numpy()
        values *= 255
        values += 0.5
        out[:, start : start + UINT8_ROWS] = np.floor(values, out=values)
    return out, bad


def _output_rows(rows: np.ndarray, gray: bool, alpha: np.ndarray | None) -> np.ndarray:
    """uint8 RGB rows ``[r, W, 3]`` of a sample as written: gray inputs give gray outputs
    (channel mean), ``alpha`` (the upscaled alpha of the same rows) is appended."""
    if gray:
        rows = np.floor(rows.mean(axis=2) + 0.5).astype(np.uint8)
    if alpha is not None:
        rows = np.dstack([rows, alpha]) if rows.ndim == 3 else np.dstack([rows] * 3 + [alpha])
    return rows


class _PendingPng:
    """One output PNG written a band of rows at a time (``PngRowWriter``) into the temporary
    file of ``atomic_path``: ``finish`` puts it in place, ``abort`` deletes it."""

    def __init__(self, path: Path, width: int, height: int, channels: int) -> None:
        self.path = path
        self._atomic = atomic_path(path)
        self._file = open(self._atomic.__enter__(), "wb")  # noqa: SIM115 (closed by finish/abort)
        self._png = PngRowWriter(self._file, width, height, channels)
        self.open = True

    def write(self, rows: np.ndarray) -> None:
        self._png.write(rows)

    def finish(self) -> Path:
        """Complete the file and move it to ``path``."""
        self._png.close()
        self.open = False
        self._file.close()
        self._atomic.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        """Delete the temporary file; ``path`` is left as it was."""
        if self.open:
            self.open = False
            self._file.close()
            error = NonFiniteOutputError(f"{self.path.name} is not written")
            self._atomic.__exit__(NonFiniteOutputError, error, None)


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
    recover: bool = False,
) -> SampleSummary:
    """Super-resolve image files (or folders of them) into ``out_dir`` as ``output_name`` PNGs.

    Each image's noise comes from ``torch.Generator().manual_seed(seed)``, so a seed gives
    the same outputs for an image whatever else is sampled with it. Unreadable files are
    skipped and named in the summary; none readable at all is an ``ImageReadError``.
    A sample with NaN or inf pixels is not written; the summary names it and the fraction.
    The samples are written as they are decoded, a strip of rows at a time
    (``sample_strips``, ``PngRowWriter``), so with ``tile`` the memory is bounded by the tile
    row, not the image (beyond the LR image itself).

    ``temperature_map``: a grey image of the SR size; grey g samples a pixel at
    ``temperature * g / 255``. ``uncertainty`` (n >= 2): per input and temperature also the
    mean image ``_mean.png``, the per-pixel standard deviation as a colour image
    ``_std.png`` (viridis, scaled to its maximum) and its values ``_std.npy``
    (`cinn_sr.uncertainty`); these need the samples whole, in float.

    ``recover``: a sample with NaN/inf pixels is decoded again whole with the latents of its
    exploded region re-drawn at half the temperature, up to 3 times
    (`cinn_sr.latent.recover_nonfinite`); a recovered sample is written and listed in
    ``summary.recovered``.
    """
    if recover and tile is not None:
        raise OptionError("recover decodes a failed sample whole: drop tile")
    if uncertainty and n < 2:
        raise OptionError(f"the uncertainty needs at least 2 samples per image, got {n}")
    files = expand_inputs(inputs)
    temperatures = tuple(dict.fromkeys(float(t) for t in temperatures))
    relative = read_grey(temperature_map)[None, None] if temperature_map is not None else None
    if relative is not None:
        _check_map_fits_all(relative, files, model.config.scale, temperature_map)
    out_dir = Path(out_dir)
    model.eval()
    summary = SampleSummary(0, temperatures, n, [], out_dir, [])
    for path in tqdm(files, desc="sample", unit="image", disable=not progress):
        try:
            rgb, gray, alpha = _read_with_mode(path)
        except ImageReadError as error:
            summary.skipped.append(str(error))
            continue
        lr = to_tensor(rgb)[None]
        if relative is not None:
            _check_map_fits(relative, lr, model.config.scale, temperature_map, path)
        strips = sample_strips(
            model, lr, temperatures, n, torch.Generator().manual_seed(seed), tile, overlap,
            relative, progress,
        )
        names = [
            output_name(path.stem, t, index, relative is not None)
            for t in temperatures
            for index in range(n)
        ]
        kept = _write_strips(strips, out_dir, names, lr.shape[-2:], model.config.scale, gray,
                             alpha, uncertainty, summary)
        bad = {name for name, _ in summary.nonfinite}  # no uncertainty map with these
        if recover:
            _recover(model, lr, names, temperatures, n, seed, relative, out_dir, gray, alpha,
                     summary)
        for i, temperature in enumerate(temperatures if uncertainty else ()):
            if not bad.intersection(names[i * n : (i + 1) * n]):
                batch = torch.cat([strip[i * n : (i + 1) * n] for strip in kept], dim=-2)
                name = f"{path.stem}_{_tag(temperature, relative is not None)}"
                summary.uncertainty += _write_uncertainty(out_dir, name, batch)
        summary.inputs += 1
    if len(summary.skipped) == len(files):
        raise ImageReadError(f"no readable input image: {'; '.join(summary.skipped)}")
    return summary


def _write_strips(
    strips: Iterator[tuple[int, Tensor]],
    out_dir: Path,
    names: Sequence[str],
    lr_size: tuple[int, int],
    scale: int,
    gray: bool,
    alpha: np.ndarray | None,
    keep: bool,
    summary: SampleSummary,
) -> list[Tensor]:
    """Write the samples of ``sample_strips`` (one per name) as PNGs, band by band; a sample
    with a NaN/inf pixel is dropped and listed in ``summary.nonfinite`` with its fraction,
    the written ones are added to ``summary.written``. With ``keep``, returns the strips
    clamped to [0, 1] (for the uncertainty maps), otherwise nothing."""
    height, width = lr_size[0] * scale, lr_size[1] * scale
    big_alpha = None if alpha is None else imresize(alpha, scale)[:height, :width]
    channels = 4 if alpha is not None else 1 if gray else 3  # gray + alpha: RGBA
    pending = [_PendingPng(out_dir / name, width, height, channels) for name in names]
    bad = torch.zeros(len(names), dtype=torch.long)
    kept = []
    try:
        for start, strip in strips:
            rows, strip_bad = to_uint8_rows(strip)
            bad += strip_bad
            band = None if big_alpha is None else big_alpha[start : start + rows.shape[1]]
            for output, image, count in zip(pending, rows, bad.tolist(), strict=True):
                if count:
                    output.abort()
                else:
                    output.write(_output_rows(image, gray, band))
            if keep:
                kept.append(strip.clamp(0, 1))
    except BaseException:
        for output in pending:
            output.abort()
        raise
    for output, count in zip(pending, bad.tolist(), strict=True):
        if count:
            summary.nonfinite.append((output.path.name, count / (height * width)))
        else:
            summary.written.append(output.finish())
    return kept


def _recover(
    model: SRFlow, lr: Tensor, names: Sequence[str], temperatures: Sequence[float], n: int,
    seed: int, relative: Tensor | None, out_dir: Path, gray: bool, alpha: np.ndarray | None,
    summary: SampleSummary,
) -> None:
    """Re-decode this input's non-finite samples with `recover_nonfinite`; write the ones it
    makes finite and move them from ``summary.nonfinite`` to ``summary.recovered``."""
    from cinn_sr.latent import recover_nonfinite

    failed = dict(summary.nonfinite)
    todo = [k for k, name in enumerate(names) if name in failed]
    if not todo:
        return
    s = model.config.scale
    eps = BlockNoise.for_image(model, lr.shape[-2], lr.shape[-1], n,
                               torch.Generator().manual_seed(seed)).whole()
    device = next(model.parameters()).device
    for k in todo:
        temperature, index = temperatures[k // n], k % n
        value = temperature if relative is None else relative * temperature
        levels = model.level_temperatures(value, lr)
        latents = [e[index : index + 1] * (t.cpu() if isinstance(t, Tensor) else t)
                   for e, t in zip(eps, levels, strict=True)]
        image, redrawn, last = recover_nonfinite(
            model, lr.to(device), latents, temperature,
            torch.Generator().manual_seed(block_seed(seed, index, -1, k, 0)),
        )
        if not bool(torch.isfinite(image).all()):
            continue
        rows, _ = to_uint8_rows(image)
        big_alpha = None if alpha is None else imresize(alpha, s)[: image.shape[-2],
                                                                   : image.shape[-1]]
        path = write_image(out_dir / names[k], _output_rows(rows[0], gray, big_alpha))
        summary.written.append(path)
        summary.nonfinite = [item for item in summary.nonfinite if item[0] != names[k]]
        summary.recovered.append((names[k], float(redrawn.float().mean()), last))


def _check_map_fits_all(relative: Tensor, files: Sequence[Path], scale: int, map_path) -> None:
    """Every readable input against the temperature map before anything is written (image
    headers only; unreadable files are left for the sampling loop to skip and name)."""
    for path in files:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, Image.DecompressionBombError):
            continue
        _check_map_fits(relative, torch.empty(1, 1, height, width), scale, map_path, path)


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
