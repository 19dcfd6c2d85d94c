"""Real odd image files for the data tests: grayscale, alpha, 16-bit, truncated, not images."""

import struct
import zlib
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from skimage import data


def _chunk(tag: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(tag + payload))
    return struct.pack(">I", len(payload)) + tag + payload + crc


def write_png16_rgb(path: Path, rgb16: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = rgb16.shape
    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def write_png_bomb(path: Path, side: int = 100_000) -> None:
    """A 60-byte PNG whose header declares side x side pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IEND", b""))


def make_odd_images(folder: Path) -> dict[str, np.ndarray]:
    """Write one file per bad-input case; returns the expected 8-bit RGB of the readable ones."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = data.coffee()[:200, :240]
    gray = photo.mean(axis=2).astype(np.uint8)
    expected = {}

    Image.fromarray(gray).save(folder / "gray.png")
    expected["gray.png"] = np.repeat(gray[:, :, None], 3, axis=2)

    alpha = np.full((*photo.shape[:2], 1), 128, dtype=np.uint8)
    Image.fromarray(np.concatenate([photo, alpha], axis=2)).save(folder / "rgba.png")
    expected["rgba.png"] = photo

    gray16 = (gray.astype(np.uint32) * 250 + 37).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "gray16.png")
    expected["gray16.png"] = np.repeat(
        np.floor(gray16 * 255.0 / 65535 + 0.5).astype(np.uint8)[:, :, None], 3, axis=2
    )

    rgb16 = photo.astype(np.uint16) * 257
    tifffile.imwrite(folder / "rgb16.tif", rgb16)
    expected["rgb16.tif"] = photo
    write_png16_rgb(folder / "rgb16.png", rgb16)
    expected["rgb16.png"] = photo

    Image.fromarray(photo[:60, :90]).save(folder / "tiny.png")
    Image.fromarray(photo).save(folder / "truncated.jpg", quality=95)
    whole = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.png").write_text("this is not an image\n")
    write_png_bomb(folder / "bomb.png")
    return expected
