"""Reading images as 8-bit RGB and writing them atomically.

Every reader path ends in one layout: ``H x W x 3`` uint8 RGB numpy. Grayscale is repeated
to three channels, an alpha channel is dropped (with a warning), 16-bit and 32-bit integer
images are scaled to 8 bits (``round(v * 255 / max)``), palette/CMYK images are converted.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from .atomic import atomic_path

__all__ = [
    "png_bytes",
    "ImageReadError",
    "IMAGE_SUFFIXES",
    "read_image",
    "write_image",
    "list_images",
    "lr_files_by_stem",
    "to_tensor",
    "scaled_size_mismatch",
    "check_scaled_size",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageReadError(ValueError):
    """An image file that cannot be read (unknown format, truncated, corrupt)."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(
        p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def lr_files_by_stem(lr_dir: str | os.PathLike, scale: int) -> dict[str, Path]:
    """The LR images of ``lr_dir`` by the HR stem they belong to: ``0801.png`` and DIV2K's
    ``0801x4.png`` (at ``scale`` 4) both belong to HR ``0801``."""
    return {path.stem.removesuffix(f"x{scale}"): path for path in list_images(lr_dir)}


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 ``H x W x C`` numpy -> float32 ``[C, H, W]`` tensor in [0, 1] (``/ 255``, done in
    numpy: no torch thread pool for small work)."""
    chw = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)
    chw /= 255.0
    return torch.from_numpy(chw)


def _hw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def scaled_size_mismatch(
    scale: int, lr_size: Sequence[int], hr_size: Sequence[int]
) -> tuple[int, int] | None:
    """None when ``hr_size`` (height, width) is ``scale`` times ``lr_size``; otherwise the
    size it should be."""
    expected = (int(lr_size[0]) * scale, int(lr_size[1]) * scale)
    return None if (int(hr_size[0]), int(hr_size[1])) == expected else expected


def check_scaled_size(
    scale: int,
    lr: tuple[str, Sequence[int]],
    *hr: tuple[str, Sequence[int]],
    scale_text: str | None = None,
) -> None:
    """Raise ValueError, one line naming the files and sizes (height x width), unless each
    (name, size) of ``hr`` is ``scale`` times the (name, size) ``lr``: ``HR a.png is 64x60 but
    LR a.png (16x16) at 4x needs 64x64``. ``scale_text`` replaces the ``4x``."""
    lr_name, lr_size = lr
    for name, size in hr:
        expected = scaled_size_mismatch(scale, lr_size, size)
        if expected is not None:
            raise ValueError(
                f"{name} is {_hw(size)} but {lr_name} ({_hw(lr_size)}) at "
                f"{scale_text or f'{scale}x'} needs {_hw(expected)}"
            )


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale an integer or float image to uint8 (16-bit: v * 255 / 65535, rounded)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        peak = 1.0 if array.size == 0 or np.nanmax(array) <= 1.0 else 255.0
        scaled = np.nan_to_num(array.astype(np.float64)) * (255.0 / peak)
    else:
        bits = 16 if array.dtype.itemsize <= 2 or array.max(initial=0) <= 65535 else 32
        scaled = array.astype(np.float64) * (255.0 / (2**bits - 1))
    return np.floor(np.clip(scaled, 0, 255) + 0.5).astype(np.uint8)


def _to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """Bring ``H x W``, ``H x W x 1/2/3/4`` arrays to ``H x W x 3``."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(f"{name}: unsupported image layout {array.shape}")
    if array.shape[2] in (2, 4):
        warnings.warn(f"{name}: alpha channel dropped", stacklevel=3)
        array = array[:, :, :-1]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        return tifffile.imread(path, key=0)
    except Exception as error:  # tifffile raises many types for damaged files
        raise ImageReadError(f"{path.name}: corrupt TIFF ({error})") from error


def _read_pillow(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("P", "PA"):
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGB")
            elif image.mode == "1":
                image = image.convert("L")
            return np.array(image)
    except UnidentifiedImageError as error:
        raise ImageReadError(f"{path.name}: not a recognised image file") from error
    except Image.DecompressionBombError as error:  # a header declaring billions of pixels
        raise ImageReadError(
            f"{path.name}: too large to read safely (over {2 * Image.MAX_IMAGE_PIXELS} "
            f"pixels, Pillow's decompression-bomb limit)"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        reason = "truncated file" if "truncated" in str(error).lower() else f"corrupt ({error})"
        raise ImageReadError(f"{path.name}: {reason}") from error


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``H x W x 3`` uint8 RGB (see the module docstring).

    Raises ``ImageReadError`` (a ``ValueError``) with a one-line message for a missing,
    unreadable or truncated file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path.name}: no such file")
    reader = _read_tiff if path.suffix.lower() in (".tif", ".tiff") else _read_pillow
    array = reader(path)
    if array.size == 0:
        raise ImageReadError(f"{path.name}: empty image")
    return _to_rgb(_to_uint8(array), path.name)


def _as_uint8_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 4:
            if tensor.shape[0] != 1:
                raise ValueError(f"write_image takes one image, got a batch of {tensor.shape[0]}")
            tensor = tensor[0]
        if tensor.ndim == 3:
            tensor = tensor.permute(1, 2, 0)
        if tensor.is_floating_point():
            tensor = torch.floor(tensor.double().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        image = tensor.numpy()
    elif image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"write_image takes uint8 or float [0, 1] images, got {image.dtype}")
        image = np.floor(np.clip(image.astype(np.float64), 0, 1) * 255 + 0.5).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"write_image takes HxW, HxWx3 or CxHxW images, got {image.shape}")
    return np.ascontiguousarray(image)


def png_bytes(image: np.ndarray | torch.Tensor) -> bytes:
    """An image (as `write_image` takes it) encoded as PNG, in memory."""
    buffer = io.BytesIO()
    Image.fromarray(_as_uint8_hwc(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image(path: str | os.PathLike, image: np.ndarray | torch.Tensor) -> Path:
    """Write an image atomically (temporary file in the same folder, then ``os.replace``).

    Accepts uint8 ``H x W x 3`` numpy, float numpy in [0, 1], or a torch tensor ``[3, H, W]``
    / ``[1, 3, H, W]`` (float in [0, 1], rounded to uint8; or uint8). The format follows the
    suffix (PNG when there is none known to Pillow).
    """
    path = Path(path)
    array = _as_uint8_hwc(image)
    file_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_path(path) as temp:
        Image.fromarray(array).save(temp, format=file_format)
    return path
