"""Whole-image HR/LR pairs from folders, for evaluation (DIV2K, Set5/Set14 layouts)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import (
    ImageReadError,
    check_scaled_size,
    list_images,
    lr_files_by_stem,
    read_image,
    to_tensor,
)
from .resize import imresize

__all__ = ["ImageFolderPairs", "crop_to_multiple"]


def crop_to_multiple(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop an ``H x W x C`` image at the bottom/right so both sides are multiples of scale."""
    height, width = image.shape[:2]
    return image[: height - height % scale, : width - width % scale]


class ImageFolderPairs(Dataset):
    """``(name, hr, lr)`` per image of ``hr_dir``: float tensors in [0, 1], ``[3, H, W]``.

    HR is cropped to a multiple of ``scale``. LR comes from ``lr_dir`` (same stem, or the
    DIV2K name ``0801x4.png`` for ``0801.png``; its size must be HR / scale) or, without
    ``lr_dir``, is ``imresize(HR, 1/scale)`` rounded to uint8. ``name`` is the HR file stem.
    Raises ``ValueError`` (one line) for an empty folder or missing LR files.
    """

    def __init__(
        self, hr_dir: str | os.PathLike, scale: int, lr_dir: str | os.PathLike | None = None
    ):
        self.hr_dir = Path(hr_dir)
        self.scale = int(scale)
        if self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        if not self.hr_dir.is_dir():
            raise ValueError(f"{hr_dir}: no such folder")
        self.hr_files = list_images(self.hr_dir)
        if not self.hr_files:
            raise ValueError(f"{hr_dir}: no images found")
        self.lr_files: list[Path] | None = None
        if lr_dir is not None:
            if not Path(lr_dir).is_dir():
                raise ValueError(f"{lr_dir}: no such folder")
            by_stem = lr_files_by_stem(lr_dir, self.scale)
            missing = [p.name for p in self.hr_files if p.stem not in by_stem]
            if missing:
                raise ValueError(
                    f"{lr_dir}: no LR image for {len(missing)} HR images ({', '.join(missing[:5])})"
                )
            self.lr_files = [by_stem[p.stem] for p in self.hr_files]

    def __len__(self) -> int:
        return len(self.hr_files)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        hr_path = self.hr_files[index]
        hr = crop_to_multiple(read_image(hr_path), self.scale)
        if hr.size == 0:
            raise ImageReadError(f"{hr_path.name}: smaller than the scale {self.scale}")
        if self.lr_files is None:
            lr = imresize(hr, 1 / self.scale)
        else:
            lr = read_image(self.lr_files[index])
            check_scaled_size(
                self.scale,
                (f"LR {self.lr_files[index].name}", lr.shape[:2]),
                (f"HR {hr_path.name} (cropped to a multiple of {self.scale})", hr.shape[:2]),
            )
        return hr_path.stem, to_tensor(hr), to_tensor(lr)
