"""Packing image folders into one HDF5 file of HR patches and their LR counterparts.

File layout (all uint8, one chunk per patch, compressed):

- ``hr``: ``N x P x P x 3``; ``lr``: ``N x P/s x P/s x 3``; ``source_index``: ``N`` (int32,
  index into the ``sources`` attribute).
- attributes: ``format`` = ``"cinn-sr-patches"``, ``format_version``, ``version`` (package),
  ``scale``, ``patch``, ``degradation`` (``"bicubic"``: LR = ``imresize(HR patch, 1/s)``
  rounded to uint8; ``"paired"``: LR cropped from a given LR image), ``mode`` (``random``,
  ``grid`` or ``faces``), ``per_image``, ``stride``, ``max_side`` (0: none), ``seed``,
  ``sources`` (file names).

Images are streamed one at a time into resizable datasets, so memory does not grow with
the number of images. The file is written under a temporary name in the output folder and
renamed when complete; on any error or interruption the temporary file is removed.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from .atomic import atomic_path, ensure_free_space
from .errors import OptionError
from .images import (
    IMAGE_SUFFIXES,
    ImageReadError,
    check_scaled_size,
    list_images,
    lr_files_by_stem,
    read_image,
)
from .resize import imresize

__all__ = [
    "PATCH_FILE_FORMAT",
    "PATCH_FILE_VERSION",
    "PATCH_SIZE",
    "PER_IMAGE",
    "PackSummary",
    "pack_images",
]

PATCH_FILE_FORMAT = "cinn-sr-patches"
PATCH_FILE_VERSION = 1
PATCH_SIZE = 160
"""Default HR patch side: the SRFlow paper's 160 x 160 training patches (section 5)."""
PER_IMAGE = 47
"""Default random crops per image, as the reference code (andreas128/SRFlow) packs DF2K."""


def _package_version() -> str:
    try:
        return version("cinn-sr")
    except PackageNotFoundError:
        return "0.0.0"


@dataclass
class PackSummary:
    """What a pack produced: counts, skipped files with reasons, warnings, time taken."""

    out: Path
    patches: int
    images: int
    scale: int
    patch: int
    degradation: str
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One-line human summary."""
        lr = self.patch // self.scale
        text = (
            f"packed {self.patches} patches ({self.patch}x{self.patch} HR, {lr}x{lr} LR, "
            f"x{self.scale} {self.degradation}) from {self.images} image"
            f"{'' if self.images == 1 else 's'} into {self.out} "
            f"in {self.seconds:.1f} s"
        )
        if self.skipped:
            text += f"; skipped {len(self.skipped)}: {_list_skipped(self.skipped, ', ')}"
        return text


def _list_skipped(skipped: list[tuple[str, str]], separator: str, shown: int = 10) -> str:
    """``name (reason)`` for the first ``shown`` skipped files, then how many more."""
    text = separator.join(f"{name} ({reason})" for name, reason in skipped[:shown])
    if len(skipped) > shown:
        text += f"{separator}and {len(skipped) - shown} more"
    return text


def collect_sources(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named directly or found (sorted, not recursively) in the given folders."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files.extend(list_images(path))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{source}: no such file or folder")
    return files


def _positions(
    length: int, patch: int, count: int | None, stride: int | None, step: int, rng
) -> np.ndarray:
    """Top-left offsets along one axis: a regular grid, or ``count`` random multiples of step."""
    if stride is not None:
        return np.arange(0, length - patch + 1, stride)
    return rng.integers(0, (length - patch) // step + 1, size=count) * step


def _crop_boxes(
    shape: Sequence[int], patch: int, per_image: int, stride: int | None, step: int, rng
) -> list[tuple[int, int]]:
    height, width = shape[:2]
    if stride is not None:
        ys = _positions(height, patch, None, stride, step, rng)
        xs = _positions(width, patch, None, stride, step, rng)
        return [(int(y), int(x)) for y in ys for x in xs]
    ys = _positions(height, patch, per_image, None, step, rng)
    xs = _positions(width, patch, per_image, None, step, rng)
    return [(int(y), int(x)) for y, x in zip(ys, xs, strict=True)]


def _centre_square(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


class _SkipImage(Exception):
    """An input image that is left out of the pack (the message is the reason)."""


def _read(path: Path, notes: list[str]) -> np.ndarray:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image = read_image(path)
        except ImageReadError as error:
            reason = str(error).removeprefix(f"{path.name}: ")
            raise _SkipImage(reason) from error
    notes.extend(str(w.message) for w in caught)
    return image


def limit_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` downscaled (MATLAB bicubic) so that its longer side is at most ``max_side``."""
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image
    factor = max_side / max(height, width)
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    return imresize(image, size=size)


def _patches_of(
    path: Path,
    index: int,
    *,
    scale: int,
    patch: int,
    per_image: int,
    stride: int | None,
    seed: int,
    faces: bool,
    lr_files: dict[str, Path] | None,
    max_side: int | None,
    notes: list[str],
) -> tuple[np.ndarray, np.ndarray]:
    """HR patches ``n x P x P x 3`` and LR patches of one image (raises _SkipImage)."""
    hr_image = limit_side(_read(path, notes), max_side)
    height, width = hr_image.shape[:2]
    if min(height, width) < patch:
        raise _SkipImage(f"{width}x{height} is smaller than the {patch}x{patch} patch")
    if faces:
        hr = imresize(_centre_square(hr_image), size=(patch, patch))[None]
        return hr, imresize(hr, 1 / scale)
    lr_image = None
    if lr_files is not None:
        lr_path = lr_files.get(path.stem)
        if lr_path is None:
            raise _SkipImage("no LR image with a matching name")
        lr_image = _read(lr_path, notes)
        try:
            check_scaled_size(
                scale,
                (f"LR {lr_path.name}", lr_image.shape[:2]),
                (
                    f"HR {path.name} (cropped to a multiple of {scale})",
                    (height - height % scale, width - width % scale),
                ),
            )
        except ValueError as error:
            raise _SkipImage(str(error)) from error
    rng = np.random.default_rng([seed, index])
    step = 1 if lr_image is None else scale
    boxes = _crop_boxes(hr_image.shape, patch, per_image, stride, step, rng)
    hr = np.stack([hr_image[y : y + patch, x : x + patch] for y, x in boxes])
    if lr_image is None:
        return hr, imresize(hr, 1 / scale)
    side = patch // scale
    lr = np.stack(
        [lr_image[y // scale : y // scale + side, x // scale : x // scale + side] for y, x in boxes]
    )
    return hr, lr


def _create_datasets(handle: h5py.File, patch: int, lr_size: int, compression: str) -> None:
    options = {"compression": compression}
    if compression == "gzip":
        options["compression_opts"] = 1
    for name, side in (("hr", patch), ("lr", lr_size)):
        handle.create_dataset(
            name,
            shape=(0, side, side, 3),
            maxshape=(None, side, side, 3),
            chunks=(1, side, side, 3),
            dtype=np.uint8,
            **options,
        )
    handle.create_dataset("source_index", shape=(0,), maxshape=(None,), dtype=np.int32)


def _append(handle: h5py.File, hr: np.ndarray, lr: np.ndarray, source: int) -> None:
    start = handle["hr"].shape[0]
    stop = start + hr.shape[0]
    for name, values in (("hr", hr), ("lr", lr)):
        handle[name].resize(stop, axis=0)
        handle[name][start:stop] = values
    handle["source_index"].resize(stop, axis=0)
    handle["source_index"][start:stop] = source


def _check_options(
    scale: int,
    patch: int,
    per_image: int | None,
    stride: int | None,
    faces: bool,
    paired: bool,
    max_side: int | None,
) -> None:
    def refuse(why: str) -> None:
        raise OptionError(why)

    if per_image is not None and stride is not None:
        refuse("per_image and stride exclude each other")
    if faces and (per_image is not None or stride is not None):
        refuse("faces packs one patch per image: drop per_image and stride")
    if faces and paired:
        refuse("faces resizes whole images and cannot use paired LR images (lr_dir)")
    if scale < 1 or patch < 1 or patch % scale:
        refuse(f"patch {patch} is not a multiple of scale {scale}")
    if per_image is not None and per_image < 1:
        refuse(f"per_image must be positive, got {per_image}")
    if stride is not None and stride < 1:
        refuse(f"stride must be positive, got {stride}")
    if paired and stride is not None and stride % scale:
        refuse(
            f"with paired LR images (lr_dir) the stride {stride} must be a multiple of "
            f"scale {scale}"
        )
    if max_side is not None and max_side < patch:
        refuse(f"max_side {max_side} is smaller than the patch size {patch}")
    if max_side is not None and paired:
        refuse("max_side would change the HR size that paired LR images (lr_dir) must match")


def pack_images(
    sources: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    scale: int = 4,
    patch: int = PATCH_SIZE,
    per_image: int | None = None,
    stride: int | None = None,
    seed: int = 0,
    lr_dir: str | os.PathLike | None = None,
    faces: bool = False,
    progress: bool = True,
    compression: str = "gzip",
    max_side: int | None = None,
) -> PackSummary:
    """Pack images (files or folders) into an HDF5 patch file (layout: module docstring).

    Modes: ``per_image`` random crops per image (default, reproducible from ``seed``), a
    regular grid with ``stride``, or ``faces=True``: each image centre-cropped to a square and
    resized to ``patch x patch``. LR is ``imresize(HR, 1/scale)`` rounded to uint8, or with
    ``lr_dir`` the matching crop of the LR image of the same name (``0801.png`` or
    ``0801x4.png``; HR crops are then aligned to multiples of ``scale``). ``max_side``
    first downscales (MATLAB bicubic) every image whose longer side exceeds it, e.g. 2048 to
    bring 5K wallpapers to DIV2K's resolution, where patches carry detail.

    Unreadable, truncated or too small images are skipped and listed in the summary; an
    alpha channel is dropped with a note in ``summary.warnings``. Raises ``ValueError``
    (one line) for bad options or when no image could be packed.
    """
    started = time.perf_counter()
    _check_options(scale, patch, per_image, stride, faces, lr_dir is not None, max_side)
    if per_image is None:
        per_image = PER_IMAGE
    files = collect_sources(sources)
    if not files:
        raise ValueError(f"no image files found (looked for {', '.join(IMAGE_SUFFIXES)})")
    lr_files = None
    if lr_dir is not None:
        if not Path(lr_dir).is_dir():
            raise FileNotFoundError(f"{lr_dir}: no such folder")
        lr_files = lr_files_by_stem(lr_dir, scale)
    out = Path(out)
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    packed_sources: list[str] = []
    with atomic_path(out) as temp_name, h5py.File(temp_name, "w", libver="v108") as handle:
        _create_datasets(handle, patch, patch // scale, compression)
        for index, path in enumerate(
            tqdm(files, desc="pack", unit="img", disable=not progress)
        ):
            try:
                hr, lr = _patches_of(
                    path,
                    index,
                    scale=scale,
                    patch=patch,
                    per_image=per_image,
                    stride=stride,
                    seed=seed,
                    faces=faces,
                    lr_files=lr_files,
                    max_side=max_side,
                    notes=notes,
                )
            except _SkipImage as reason:
                skipped.append((path.name, str(reason)))
                continue
            # HDF5 reports a full disk only when it flushes (pages of errors, sometimes a crash)
            ensure_free_space(out, int(1.01 * (hr.nbytes + lr.nbytes)) + 2**16)
            _append(handle, hr, lr, len(packed_sources))
            packed_sources.append(path.name)
        if not packed_sources:
            raise ValueError(f"no image could be packed: {_list_skipped(skipped, '; ')}")
        handle.attrs.update(
            {
                "format": PATCH_FILE_FORMAT,
                "format_version": PATCH_FILE_VERSION,
                "version": _package_version(),
                "scale": scale,
                "patch": patch,
                "degradation": "paired" if lr_files is not None else "bicubic",
                "mode": "faces" if faces else ("grid" if stride is not None else "random"),
                "per_image": 1 if faces else (per_image if stride is None else 0),
                "stride": stride or 0,
                "max_side": max_side or 0,
                "seed": seed,
                "sources": np.array(packed_sources, dtype=h5py.string_dtype()),
            }
        )
        count = handle["hr"].shape[0]
    return PackSummary(
        out=out,
        patches=count,
        images=len(packed_sources),
        scale=scale,
        patch=patch,
        degradation="paired" if lr_files is not None else "bicubic",
        seconds=time.perf_counter() - started,
        skipped=skipped,
        warnings=notes,
    )
