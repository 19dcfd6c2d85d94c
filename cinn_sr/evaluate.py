"""Scoring SR images against HR: a folder of ready SR images, or a model's samples.

Per image, ``psnr``, ``ssim``, ``lpips`` and ``lr_psnr`` are means over its samples;
``diversity`` is the NTIRE 2021 score over all its samples (``metrics.diversity``) and
``nll_bpd`` the model's NLL of the HR in bits per dimension. The mean row averages the
images. SR images are rounded to uint8 before scoring, as when they are saved.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cinn_sr import metrics
from cinn_sr.datasets import (
    ImageFolderPairs,
    ImageReadError,
    OptionError,
    list_images,
    read_image,
    to_tensor,
)
from cinn_sr.datasets.atomic import atomic_write_text
from cinn_sr.lpips import LPIPS, load_lpips
from cinn_sr.model import DEFAULT_TEMPERATURE, SRFlow
from cinn_sr.sampling import (
    NONFINITE_REMEDY,
    NonFiniteOutputError,
    describe_nonfinite,
    nonfinite_fraction,
    super_resolve,
)

__all__ = [
    "METRICS",
    "MODEL_METRICS",
    "EvaluationResult",
    "Scorer",
    "evaluate_sr_folder",
    "evaluate_model",
    "write_results",
    "format_table",
]

METRICS: tuple[str, ...] = ("psnr", "ssim", "lpips", "lr_psnr", "diversity", "nll_bpd")
MODEL_METRICS: tuple[str, ...] = ("diversity", "nll_bpd")


@dataclass
class EvaluationResult:
    """Per-image scores (``images``: dicts with ``name`` and one value per metric) and settings."""

    metrics: tuple[str, ...]
    images: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    nonfinite: list[tuple[str, float]] = field(default_factory=list)
    """Images left unscored because a sample had NaN/inf pixels: (name, worst fraction)."""
    skipped: list[str] = field(default_factory=list)
    """Unreadable (or too small) HR images, one reason each."""

    @property
    def mean(self) -> dict[str, float]:
        """Each metric averaged over the images (inf when any image scores inf, e.g. PSNR of a
        copy)."""
        return {m: float(np.mean([image[m] for image in self.images])) for m in self.metrics}

    def to_dict(self) -> dict:
        """``{"mean": ..., "images": [...], "settings": ...}`` with non-finite values as null."""
        clean = lambda row: {k: _finite_or_none(v) for k, v in row.items()}  # noqa: E731
        payload = {
            "mean": clean(self.mean),
            "images": [clean(image) for image in self.images],
            "settings": self.settings,
        }
        if self.skipped:
            payload["skipped"] = self.skipped
        if self.nonfinite:
            payload["nonfinite"] = [{"name": n, "fraction": f} for n, f in self.nonfinite]
        return payload


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


class Scorer:
    """Computes the requested metrics for one image (its SR samples, HR and LR, all uint8 HWC)."""

    def __init__(
        self,
        metric_names: Sequence[str],
        scale: int,
        convention: metrics.Convention = "srflow",
        lpips_weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        unknown = sorted(set(metric_names) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metrics: {', '.join(unknown)}")
        if convention not in metrics.CONVENTIONS:
            raise ValueError(f"unknown convention {convention!r}")
        self.metric_names = tuple(m for m in METRICS if m in metric_names)
        self.scale = scale
        self.convention = convention
        self.device = torch.device(device)
        needs_lpips = "lpips" in self.metric_names or "diversity" in self.metric_names
        self.lpips: LPIPS | None = load_lpips(lpips_weights, self.device) if needs_lpips else None

    def _lpips(self, samples: list[np.ndarray], hr: np.ndarray, spatial: bool) -> torch.Tensor:
        target = to_tensor(hr)[None].to(self.device)
        with torch.inference_mode():
            return torch.cat(
                [
                    self.lpips.distance(
                        to_tensor(s)[None].to(self.device), target, spatial=spatial
                    ).cpu()
                    for s in samples
                ]
            )

    def score(
        self, samples: Sequence[np.ndarray], hr: np.ndarray, lr: np.ndarray
    ) -> dict[str, float]:
        """Scores of one image: per-sample metrics averaged over ``samples``, and ``diversity``."""
        samples = [metrics.to_uint8(s) for s in samples]
        scores: dict[str, float] = {}
        per_sample: dict[str, Callable[[np.ndarray], float]] = {
            "psnr": lambda s: metrics.psnr(s, hr, self.convention, self.scale),
            "ssim": lambda s: metrics.ssim(s, hr, self.convention, self.scale),
            "lr_psnr": lambda s: metrics.lr_psnr(s, lr, self.scale),
        }
        for name in self.metric_names:
            if name in per_sample:
                scores[name] = float(np.mean([per_sample[name](s) for s in samples]))
        if "lpips" in self.metric_names:
            scores["lpips"] = float(self._lpips(samples, hr, spatial=False).mean())
        if "diversity" in self.metric_names:
            scores["diversity"] = metrics.diversity(self._lpips(samples, hr, spatial=True))
        return {name: scores[name] for name in METRICS if name in scores}


def _progress(items: Iterable, total: int, enabled: bool, desc: str):
    return tqdm(items, total=total, disable=not enabled, desc=desc, unit="image", leave=False)


def _check_metrics(metric_names: Sequence[str], with_model: bool) -> tuple[str, ...]:
    if not metric_names:
        raise OptionError("no metrics requested")
    if not with_model:
        needs_model = [m for m in metric_names if m in MODEL_METRICS]
        if needs_model:
            raise OptionError(f"{', '.join(needs_model)} need a model (a checkpoint, not --sr)")
    return tuple(m for m in METRICS if m in metric_names)


def _sr_files(sr_dir: Path, names: Sequence[str]) -> dict[str, Path]:
    """SR file of each HR name (same stem, any image suffix); ValueError naming what is missing."""
    if not sr_dir.is_dir():
        raise ValueError(f"{sr_dir}: no such folder")
    by_stem = {path.stem: path for path in list_images(sr_dir)}
    missing = [name for name in names if name not in by_stem]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(
            f"{sr_dir}: no SR image for {len(missing)} of {len(names)} HR images ({shown})"
        )
    return {name: by_stem[name] for name in names}


def evaluate_sr_folder(
    sr_dir: str | os.PathLike,
    hr_dir: str | os.PathLike,
    scale: int,
    metric_names: Sequence[str] = ("psnr", "ssim", "lr_psnr"),
    convention: metrics.Convention = "srflow",
    lr_dir: str | os.PathLike | None = None,
    lpips_weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> EvaluationResult:
    """Score the images of ``sr_dir`` against the HR images of the same stem in ``hr_dir``.

    HR is cropped to a multiple of ``scale``; an SR image must have that size (or the HR's
    uncropped size, then it is cropped the same way). LR (for ``lr_psnr``) comes from
    ``lr_dir`` or ``imresize(HR, 1/scale)``. Raises ValueError naming a missing or mismatched file.
    """
    names = _check_metrics(metric_names, with_model=False)
    pairs = ImageFolderPairs(hr_dir, scale, lr_dir)
    sr_files = _sr_files(Path(sr_dir), [path.stem for path in pairs.hr_files])
    scorer = Scorer(names, scale, convention, lpips_weights, device)
    result = EvaluationResult(
        names,
        settings={
            "sr_dir": str(sr_dir),
            "hr_dir": str(hr_dir),
            "scale": scale,
            "convention": convention,
        },
    )
    for index in _progress(range(len(pairs)), len(pairs), progress, "eval"):
        try:
            name, hr, lr = pairs[index]
        except ImageReadError as error:
            result.skipped.append(str(error))
            continue
        hr_u8, lr_u8 = metrics.to_uint8(hr), metrics.to_uint8(lr)
        sr = read_image(sr_files[name])
        height, width = hr_u8.shape[:2]
        if (sr.shape[0] // scale * scale, sr.shape[1] // scale * scale) != (height, width):
            raise ValueError(
                f"{sr_files[name].name} is {sr.shape[1]}x{sr.shape[0]}, expected {width}x{height} "
                f"(as {pairs.hr_files[index].name}, cropped to a multiple of {scale})"
            )
        result.images.append({"name": name, **scorer.score([sr[:height, :width]], hr_u8, lr_u8)})
    _require_scored(result)
    return result


def _require_scored(result: EvaluationResult) -> None:
    """ImageReadError when every HR image was unreadable."""
    if not result.images and not result.nonfinite:
        raise ImageReadError(f"no readable HR image: {'; '.join(result.skipped[:5])}")


def evaluate_model(
    model: SRFlow,
    hr_dir: str | os.PathLike,
    metric_names: Sequence[str] = ("psnr", "ssim", "lr_psnr"),
    lr_dir: str | os.PathLike | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    samples: int = 1,
    convention: metrics.Convention = "srflow",
    seed: int = 0,
    tile: int | None = None,
    tile_overlap: int = 16,
    lpips_weights: str | os.PathLike | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Score ``samples`` SR samples per image of ``hr_dir`` drawn from ``model`` at ``temperature``.

    Each image's noise comes from ``torch.Generator().manual_seed(seed)`` (``sampling``).
    ``diversity`` needs at least 2 samples (NTIRE 2021 uses 10). An image with a NaN/inf
    pixel in any sample is not scored but listed in ``result.nonfinite``; when no image is
    left, ``NonFiniteOutputError``.
    """
    names = _check_metrics(metric_names, with_model=True)
    if "diversity" in names and samples < 2:
        raise OptionError("diversity needs at least 2 samples (NTIRE 2021 uses --samples 10)")
    scale = model.config.scale
    device = next(model.parameters()).device
    pairs = ImageFolderPairs(hr_dir, scale, lr_dir)
    scorer = Scorer(names, scale, convention, lpips_weights, device)
    result = EvaluationResult(
        names,
        settings={
            "hr_dir": str(hr_dir),
            "scale": scale,
            "convention": convention,
            "temperature": temperature,
            "samples": samples,
            "seed": seed,
        },
    )
    model.eval()
    for index in _progress(range(len(pairs)), len(pairs), progress, "eval"):
        try:
            name, hr, lr = pairs[index]
        except ImageReadError as error:
            result.skipped.append(str(error))
            continue
        sr = super_resolve(
            model,
            lr[None],
            [temperature],
            samples,
            torch.Generator().manual_seed(seed),
            tile,
            tile_overlap,
        )[float(temperature)]
        fraction = float(nonfinite_fraction(sr).max())
        if fraction > 0:
            result.nonfinite.append((name, fraction))
            continue
        row = scorer.score(list(sr), metrics.to_uint8(hr), metrics.to_uint8(lr))
        if "nll_bpd" in names:
            with torch.inference_mode():
                row["nll_bpd"] = float(model.nll(lr[None].to(device), hr[None].to(device))[0])
        result.images.append({"name": name, **{m: row[m] for m in names}})
    _require_scored(result)
    if not result.images and result.nonfinite:
        raise NonFiniteOutputError(
            f"every image has samples with NaN/inf pixels "
            f"({describe_nonfinite(result.nonfinite)}): {NONFINITE_REMEDY}"
        )
    return result


def write_results(result: EvaluationResult, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``path`` (JSON) and the CSV beside it (same stem): one row per image, then ``mean``."""
    json_path = Path(path)
    csv_path = json_path.with_suffix(".csv")
    atomic_write_text(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    rows = [*result.images, {"name": "mean", **result.mean}]
    lines = [["name", *result.metrics]] + [
        [row["name"], *(repr(float(row[m])) for m in result.metrics)] for row in rows
    ]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    atomic_write_text(csv_path, buffer.getvalue())
    return json_path, csv_path


DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4, "lr_psnr": 2, "diversity": 2, "nll_bpd": 4}


def format_table(result: EvaluationResult) -> str:
    """The scores as an aligned text table: one line per image, then the mean."""
    rows = [*result.images, {"name": "mean", **result.mean}]
    header = ["name", *result.metrics]
    cells = [
        [str(row["name"]), *(f"{row[m]:.{DIGITS[m]}f}" for m in result.metrics)] for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    fmt = lambda line: "  ".join(  # noqa: E731
        cell.ljust(width) if i == 0 else cell.rjust(width)
        for i, (cell, width) in enumerate(zip(line, widths, strict=True))
    )
    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *(fmt(line) for line in cells[:-1]), rule, fmt(cells[-1])])
