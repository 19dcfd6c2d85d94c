"""PNG files written a band of rows at a time, for images too large to hold whole twice.

Pillow encodes a PNG only from a whole image (and copies a numpy array into its own 4-byte
pixels first), so an image of H x W is in memory twice while it is saved. `PngRowWriter`
writes the PNG format itself: the IHDR chunk, then each band of rows filtered (Paeth, the
filter that suits photographs best) and fed to one zlib stream whose output goes out in
IDAT chunks as it comes, then IEND. Only the band and the previous row are held.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

__all__ = ["PngRowWriter"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
"""Channels -> PNG colour type: grey, grey + alpha, RGB, RGBA (8 bits per sample)."""
PAETH = 4
CHUNK_ROWS = 64
"""Rows filtered at once (bounds the int16 temporaries of the Paeth filter)."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC of type and data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def paeth_filter(rows: np.ndarray, previous: np.ndarray, channels: int) -> bytes:
    """Rows ``[r, W * C]`` (uint8) Paeth-filtered, each preceded by its filter-type byte;
    ``previous`` is the row above the first (zeros above the image)."""
    x = rows.astype(np.int16)
    up = np.concatenate([previous.astype(np.int16)[None], x[:-1]])
    left = np.zeros_like(x)
    left[:, channels:] = x[:, :-channels]
    up_left = np.zeros_like(x)
    up_left[:, channels:] = up[:, :-channels]
    pa, pb = np.abs(up - up_left), np.abs(left - up_left)
    pc = np.abs(left + up - 2 * up_left)
    predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    filtered = ((x - predictor) & 0xFF).astype(np.uint8)
    types = np.full((len(rows), 1), PAETH, np.uint8)
    return np.hstack([types, filtered]).tobytes()


class PngRowWriter:
    """Write an 8-bit PNG of ``width`` x ``height`` with 1-4 channels to an open binary file,
    rows top to bottom in bands of any height (``write``); ``close`` checks that every row
    came and ends the file."""

    def __init__(
        self, handle: BinaryIO, width: int, height: int, channels: int, level: int = 6
    ) -> None:
        if channels not in COLOUR_TYPES or width < 1 or height < 1:
            raise ValueError(f"cannot write a {width}x{height} PNG with {channels} channels")
        self.handle, self.width, self.height, self.channels = handle, width, height, channels
        self.rows_written = 0
        self._previous = np.zeros(width * channels, np.uint8)
        self._zlib = zlib.compressobj(level)
        header = struct.pack(">IIBBBBB", width, height, 8, COLOUR_TYPES[channels], 0, 0, 0)
        handle.write(SIGNATURE + _chunk(b"IHDR", header))

    def write(self, rows: np.ndarray) -> None:
        """Append rows ``[r, W]`` (grey) or ``[r, W, C]``, uint8."""
        shapes = {(self.width, self.channels)} | ({(self.width,)} if self.channels == 1 else set())
        if rows.dtype != np.uint8 or tuple(rows.shape[1:]) not in shapes:
            raise ValueError(
                f"rows must be uint8 [r, {self.width}, {self.channels}], got {rows.dtype} "
                f"{list(rows.shape)}"
            )
        if self.rows_written + len(rows) > self.height:
            raise ValueError(f"more than the {self.height} rows of the image")
        flat = rows.reshape(len(rows), self.width * self.channels)
        for start in range(0, len(flat), CHUNK_ROWS):
            band = flat[start : start + CHUNK_ROWS]
            self._emit(self._zlib.compress(paeth_filter(band, self._previous, self.channels)))
            self._previous = band[-1].copy()
        self.rows_written += len(rows)

    def close(self) -> None:
        """Flush the compressed stream and write IEND; ValueError when rows are missing."""
        if self.rows_written != self.height:
            raise ValueError(f"{self.rows_written} of the {self.height} rows were written")
        self._emit(self._zlib.flush())
        self.handle.write(_chunk(b"IEND", b""))

    def _emit(self, data: bytes) -> None:
        if data:
            self.handle.write(_chunk(b"IDAT", data))
