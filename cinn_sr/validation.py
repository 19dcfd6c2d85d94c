"""What flow and RRDB validation share: the validation pairs, equal-size batches, grids."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from cinn_sr.config import ConfigError
from cinn_sr.datasets import imresize, write_image
from cinn_sr.datasets.folder_pairs import ImageFolderPairs
from cinn_sr.datasets.patch_dataset import PatchDataset

GRID_ROWS = 4
"""Validation pairs shown in a sample grid."""


class _FolderPairs(Dataset):
    """ImageFolderPairs without the names: (hr, lr)."""

    def __init__(self, folder: str, scale: int) -> None:
        self.pairs = ImageFolderPairs(folder, scale)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.pairs[index][1:]


def validation_items(
    val: str | None, train_set: Dataset, count: int, scale: int
) -> list[tuple[Tensor, Tensor]]:
    """Up to `count` (hr, lr) pairs: from a patch file, an HR folder, or the training set;
    an unusable file, folder or image of `val` is a ConfigError."""
    try:
        if val is None:
            source: Dataset = train_set
        elif Path(val).is_dir():
            source = _FolderPairs(val, scale)
        else:
            source = PatchDataset(val, augment=False, scale=scale)
        return [source[i] for i in range(min(count, len(source)))]
    except ValueError as error:
        raise ConfigError(f"val: {error}") from None


def batches_of_equal_size(items: list[tuple[Tensor, Tensor]]):
    """Consecutive items of the same size, stacked: (hr [B,3,H,W], lr [B,3,h,w])."""
    group: list[tuple[Tensor, Tensor]] = []
    for item in items:
        if group and item[0].shape != group[0][0].shape:
            yield torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group])
            group = []
        group.append(item)
    if group:
        yield torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group])


def write_grid(path: Path, rows: list[list[Tensor]]) -> None:
    """A PNG of images [3, H, W] in [0, 1]: one row per list, padded to the widest row."""
    lines = [torch.cat([img.clamp(0, 1) for img in row], dim=-1) for row in rows]
    width = max(line.shape[-1] for line in lines)
    lines = [torch.nn.functional.pad(line, (0, width - line.shape[-1])) for line in lines]
    write_image(path, torch.cat(lines, dim=-2))


def upscale_lr(lr: Tensor, scale: int) -> Tensor:
    """The LR batch resized to HR size with MATLAB-style bicubic (for the grids)."""
    return imresize(lr, scale).clamp(0, 1)


def mean_of_finite(values: list[float]) -> float:
    """The mean of the finite values; nan when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
