"""The embedded default data: scikit-image's sample photographs packed once into a cache.

`cinn-sr train` / `pretrain` without a patch file use it. Eight photos give the training
patches (32 x 32 HR); the ninth (`chelsea`, the cat) is held out and gives the validation
patches (64 x 64 HR), so the validation metrics and sample grids of a first run are on a
photo the model never trained on. Files live in `$CINN_SR_CACHE` (default
`$XDG_CACHE_HOME/cinn_sr` or `~/.cache/cinn_sr`) and are packed only when missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from cinn_sr.datasets import sample_photo_paths
from cinn_sr.datasets.pack import pack_images

HELD_OUT_PHOTO = "chelsea"
TRAIN_PATCH, TRAIN_PER_IMAGE = 32, 128
VAL_PATCH, VAL_PER_IMAGE = 64, 8


def cache_dir() -> Path:
    """Where the default patch files are kept."""
    if "CINN_SR_CACHE" in os.environ:
        return Path(os.environ["CINN_SR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cinn_sr"


def default_patches(
    scale: int = 4, folder: str | Path | None = None, progress: bool = False
) -> tuple[Path, Path]:
    """(training, validation) patch files of the sample photos at `scale`, packed if missing
    (with a progress bar when `progress`)."""
    folder = Path(folder) if folder is not None else cache_dir()
    photos = sample_photo_paths()
    train_sources = [path for name, path in photos if name != HELD_OUT_PHOTO]
    val_sources = [path for name, path in photos if name == HELD_OUT_PHOTO]
    train = folder / f"default_patches_x{scale}.h5"
    val = folder / f"default_val_x{scale}.h5"
    if not train.exists():
        pack_images(
            train_sources, train, scale=scale, patch=TRAIN_PATCH, per_image=TRAIN_PER_IMAGE,
            seed=0, progress=progress,
        )
    if not val.exists():
        pack_images(
            val_sources, val, scale=scale, patch=VAL_PATCH, per_image=VAL_PER_IMAGE, seed=1,
            progress=progress,
        )
    return train, val
