"""Rebuild the exact training patches and held-out validation crops of the `small-4x` model.

Open data only: the photographs among Debian's `plasma-workspace-wallpapers` (the largest
file of each) and scikit-image's bundled photos. Four photos are held out and never trained
on; two 256 x 256 crops of each are the validation and benchmark images.

    python recipes/small-4x/make_data.py --out data/small-4x     # ~1 min; needs apt-get

writes OUT/train_x4.h5 (16 photos, each first downscaled to 2048 pixels on its longer side,
400 random 96 x 96 HR crops per photo, seed 0) and OUT/val/*.png (the held-out crops, also
committed beside this script as `val/`).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from cinn_sr.datasets import read_image, sample_photo_paths, write_image
from cinn_sr.datasets.pack import limit_side, pack_images

WALLPAPER_PHOTOS = (
    "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
    "Grey", "Kite", "OneStandsOut", "Path", "summer_1am",
)
"""The photographs among the package's wallpapers (the others are rendered abstract art)."""
HELD_OUT = ("chelsea", "coffee", "BytheWater", "Path")
MAX_SIDE, PATCH, PER_IMAGE, SEED = 2048, 96, 400, 0
VAL_SIDE = 256


def wallpaper_files(root: Path) -> dict[str, Path]:
    """The largest image of each photographic wallpaper under an unpacked package `root`."""
    files = {}
    for name in WALLPAPER_PHOTOS:
        images = sorted((root / "usr/share/wallpapers" / name / "contents/images").iterdir())
        files[name] = max(images, key=lambda p: p.stat().st_size)
    return files


def unpack_wallpapers(work: Path) -> Path:
    """Download and unpack `plasma-workspace-wallpapers` into `work` (no install)."""
    subprocess.run(["apt-get", "download", "plasma-workspace-wallpapers"], cwd=work, check=True)
    (deb,) = work.glob("plasma-workspace-wallpapers_*.deb")
    subprocess.run(["dpkg", "-x", str(deb), str(work / "root")], check=True)
    return work / "root"


def val_crops(name: str, path: Path) -> list:
    """Two 256 x 256 crops (at the 2048-pixel scale): the centre and the lower-left third
    (moved inside the image where needed)."""
    image = limit_side(read_image(path), MAX_SIDE)
    height, width = image.shape[:2]
    half = VAL_SIDE // 2
    spots = [(height // 2, width // 2), (2 * height // 3, width // 3)]
    spots = [(min(max(y, half), height - half), min(max(x, half), width - half)) for y, x in spots]
    return [image[y - half : y + half, x - half : x + half] for y, x in spots]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wallpapers", type=Path, help="an unpacked package (dpkg -x) to reuse")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        root = args.wallpapers or unpack_wallpapers(Path(work))
        photos = dict(sample_photo_paths()) | wallpaper_files(root)
        train = [path for name, path in sorted(photos.items()) if name not in HELD_OUT]
        summary = pack_images(
            train, args.out / "train_x4.h5", scale=4, patch=PATCH, per_image=PER_IMAGE,
            seed=SEED, max_side=MAX_SIDE,
        )
        print(summary.line())
        (args.out / "val").mkdir(exist_ok=True)
        for name in HELD_OUT:
            for index, crop in enumerate(val_crops(name, photos[name])):
                write_image(args.out / "val" / f"{name}_{index}.png", crop)
        print(f"wrote {2 * len(HELD_OUT)} held-out crops to {args.out / 'val'}")


if __name__ == "__main__":
    main()
