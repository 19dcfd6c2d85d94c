"""The real RGB photographs bundled inside the scikit-image wheel (no download involved)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data

from .images import read_image

__all__ = ["SAMPLE_PHOTO_FILES", "sample_photo_paths", "sample_photos"]

SAMPLE_PHOTO_FILES = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "ihc": "ihc.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
}
"""Photographs only: the colour wheel (``color.png``) and the logo are synthetic."""


def sample_photo_paths() -> list[tuple[str, Path]]:
    """``(name, path)`` of the bundled photos that are present on disk."""
    folder = Path(skimage.data.__file__).parent
    found = [(name, folder / file) for name, file in SAMPLE_PHOTO_FILES.items()]
    return [(name, path) for name, path in found if path.is_file()]


def sample_photos() -> list[tuple[str, np.ndarray]]:
    """``(name, H x W x 3 uint8)`` for each RGB photograph shipped with scikit-image.

    Read straight from the installed ``skimage/data`` folder, so nothing is ever fetched
    from the network (about 4.8 megapixels in nine photos, 300 to 1411 pixels a side).
    """
    return [(name, read_image(path)) for name, path in sample_photo_paths()]
