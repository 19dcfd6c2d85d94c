"""A torch Dataset over a packed HDF5 patch file (see ``pack.py`` for the layout)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from .images import to_tensor
from .pack import PATCH_FILE_FORMAT

__all__ = ["PatchFileError", "PatchDataset", "read_patch_attrs"]


class PatchFileError(ValueError):
    """A file that is not a cinn-sr patch file, or not the one the caller asked for."""


def read_patch_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The attributes of a cinn-sr patch file plus ``length``; ``PatchFileError`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise PatchFileError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as handle:
            attrs = dict(handle.attrs)
            if attrs.get("format") != PATCH_FILE_FORMAT or "hr" not in handle or "lr" not in handle:
                raise PatchFileError(f"{path.name} is not a cinn-sr patch file")
            _check_layout(path.name, attrs, handle)
            attrs["length"] = int(handle["hr"].shape[0])
    except OSError as error:
        raise PatchFileError(f"{path.name} is not a cinn-sr patch file (not HDF5)") from error
    for key, value in attrs.items():
        if isinstance(value, np.integer):
            attrs[key] = int(value)
        elif isinstance(value, np.ndarray):
            attrs[key] = [v.decode() if isinstance(v, bytes) else str(v) for v in value]
    return attrs


def _check_layout(name: str, attrs: dict[str, Any], handle: h5py.File) -> None:
    """The attributes and datasets that `pack_images` writes, or a PatchFileError naming the
    file and the field."""
    for key in ("scale", "patch"):
        value = attrs.get(key)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise PatchFileError(
                f"{name}: attribute '{key}' must be a positive integer, got {value!r}"
            )
    scale, patch = int(attrs["scale"]), int(attrs["patch"])
    if patch % scale:
        raise PatchFileError(
            f"{name}: attribute 'patch' {patch} is not a multiple of 'scale' {scale}"
        )
    counts = set()
    for key, side in (("hr", patch), ("lr", patch // scale)):
        data = handle[key]
        if not isinstance(data, h5py.Dataset):
            raise PatchFileError(f"{name}: '{key}' is not a dataset")
        if data.dtype != np.uint8:
            raise PatchFileError(
                f"{name}: dataset '{key}' must be uint8 (0-255, as `cinn-sr pack` writes), "
                f"got {data.dtype}"
            )
        if data.ndim != 4 or data.shape[1:] != (side, side, 3):
            raise PatchFileError(
                f"{name}: dataset '{key}' must be N x {side} x {side} x 3 (patch {patch}, "
                f"scale {scale}), got {' x '.join(map(str, data.shape))}"
            )
        counts.add(data.shape[0])
    if len(counts) > 1:
        raise PatchFileError(
            f"{name}: datasets 'hr' and 'lr' hold different numbers of patches "
            f"({handle['hr'].shape[0]} and {handle['lr'].shape[0]})"
        )


class PatchDataset(Dataset):
    """``(hr, lr)`` float tensors in [0, 1], ``[3, P, P]`` and ``[3, P/s, P/s]``.

    The HDF5 file is opened lazily, once per process (so each DataLoader worker has its own
    handle, opened after the fork). With ``augment=True`` each item gets one of the eight
    flips/90-degree rotations, drawn from torch's RNG and applied identically to HR and LR.
    ``scale``, when given, must match the file's scale (``PatchFileError`` otherwise).
    """

    def __init__(self, path: str | os.PathLike, augment: bool = True, scale: int | None = None):
        self.path = Path(path)
        self.attrs = read_patch_attrs(self.path)
        self.scale: int = self.attrs["scale"]
        self.patch: int = self.attrs["patch"]
        self.augment = augment
        if scale is not None and scale != self.scale:
            raise PatchFileError(
                f"{self.path.name} holds x{self.scale} patches, but x{scale} was asked for"
            )
        self._length: int = self.attrs["length"]
        self._handle: h5py.File | None = None
        self._handle_pid: int | None = None

    def __len__(self) -> int:
        return self._length

    def _file(self) -> h5py.File:
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle = h5py.File(self.path, "r")
            self._handle_pid = os.getpid()
        return self._handle

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self._length <= index < self._length:
            raise IndexError(f"patch {index} out of range for {self._length} patches")
        handle = self._file()
        hr, lr = handle["hr"][index], handle["lr"][index]
        if self.augment:
            flip, turns = torch.randint(2, ()).item(), torch.randint(4, ()).item()
            if flip:
                hr, lr = hr[:, ::-1], lr[:, ::-1]
            hr, lr = np.rot90(hr, turns, axes=(0, 1)), np.rot90(lr, turns, axes=(0, 1))
        return to_tensor(hr), to_tensor(lr)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_handle_pid"] = None
        return state
