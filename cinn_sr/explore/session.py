"""One explored image: the settings that make an SR sample, and rendering them exactly.

An SR image of the explorer is a list of operations on one LR image, written as `Settings`:

1. the base sample: eps ~ N(0, I) from `torch.Generator().manual_seed(seed)` (as
   `SRFlow.sample` draws it), times the temperature of each latent entry. That temperature
   is `temperature`, or where a temperature brush painted, the brush's temperature
   (`SRFlow.level_temperatures` maps the HR map onto the levels);
2. each re-sampled region in turn: the latents inside its mask re-drawn at its temperature
   from its own seed (`cinn_sr.latent.redraw_region`), decoded, and pasted back inside the
   mask only, so every pixel outside it stays bit-identical.

`render` replays a `Settings`; the explorer page and `cinn-sr sample --settings FILE` both
use it, so a downloaded settings file reproduces the page's image bit for bit. Masks are
stored as PNG data URLs (white inside), so a settings file is one self-contained JSON.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cinn_sr.datasets import OptionError
from cinn_sr.latent import redraw_region
from cinn_sr.model import PreparedLR, SRFlow

SETTINGS_FORMAT = "cinn-sr-explore"
SETTINGS_VERSION = 1


def mask_from_data_url(url: str, size: tuple[int, int]) -> Tensor:
    """A painted mask (a PNG data URL; inside where alpha and the brightest colour channel
    are above 127, as the page paints opaque white) as bool [H, W] of `size`; ValueError for
    anything else."""
    if not isinstance(url, str) or "," not in url:
        raise ValueError("a mask must be a PNG data URL (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(url.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            rgba = np.array(image.convert("RGBA"))
    except (ValueError, OSError, Image.DecompressionBombError):
        raise ValueError("a mask must be a PNG data URL (data:image/png;base64,...) of an "
                         "image of the SR size") from None
    if rgba.shape[:2] != tuple(size):
        raise ValueError(f"the mask is {rgba.shape[0]}x{rgba.shape[1]}, the SR image "
                         f"{size[0]}x{size[1]}")
    return torch.from_numpy((rgba[..., 3] > 127) & (rgba[..., :3].max(-1) > 127))


def parse_seed(value: object, name: str = "seed") -> int:
    """A seed as `cinn-sr sample --seed` takes it: an integer in [0, 2^63 - 1]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"{name} must be an integer from 0 to 2^63 - 1, got {value!r}")
    return value


def parse_temperature(value: object, name: str = "temperature") -> float:
    """A temperature: a finite number >= 0 (not a string or a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def mask_to_data_url(mask: Tensor) -> str:
    """A bool [H, W] mask as a grey PNG data URL (white inside)."""
    buffer = io.BytesIO()
    Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass
class Brush:
    """A temperature painted onto part of the image."""

    mask: str
    temperature: float


@dataclass
class Region:
    """A re-sampled region: its mask, and the seed and temperature of its new latents."""

    mask: str
    seed: int
    temperature: float


@dataclass
class Settings:
    """Everything that makes one explorer image (module docstring)."""

    seed: int = 0
    temperature: float = 0.7
    brush: Brush | None = None
    regions: list[Region] = field(default_factory=list)

    def to_json(self) -> str:
        record = {"format": SETTINGS_FORMAT, "version": SETTINGS_VERSION, "seed": self.seed,
                  "temperature": self.temperature,
                  "brush": None if self.brush is None else vars(self.brush),
                  "regions": [vars(r) for r in self.regions]}
        return json.dumps(record, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        """Parse a settings file; OptionError (one line) for anything that is not one."""
        try:
            record = json.loads(text)
            if not isinstance(record, dict) or record.get("format") != SETTINGS_FORMAT:
                raise ValueError(f"its format is not {SETTINGS_FORMAT!r}")
            version = record.get("version")
            if isinstance(version, bool) or not isinstance(version, int) or not (
                1 <= version <= SETTINGS_VERSION
            ):
                raise ValueError(f"version {version!r} is not one this cinn-sr reads "
                                 f"(1 to {SETTINGS_VERSION})")
            return cls(
                seed=parse_seed(record.get("seed")),
                temperature=parse_temperature(record.get("temperature")),
                brush=parse_brush(record.get("brush")),
                regions=[_region(r) for r in _list(record.get("regions", []), "regions")],
            )
        except (ValueError, TypeError) as error:
            raise OptionError(f"not a cinn-sr explore settings file: {error}") from None

    @classmethod
    def read(cls, path: str | Path) -> Settings:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            raise OptionError(f"{path}: cannot read settings: {error}") from None


def _list(value: object, name: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list, got {value!r}")
    return value


def _mask_text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a PNG data URL, got {type(value).__name__}")
    return value


def parse_brush(value: object) -> Brush | None:
    """A brush from its JSON form ({"mask", "temperature"} or null)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"brush must be {{\"mask\": ..., \"temperature\": ...}} or null, "
                         f"got {value!r}")
    return Brush(_mask_text(value.get("mask"), "brush mask"),
                 parse_temperature(value.get("temperature"), "brush temperature"))


def _region(value: object) -> Region:
    """A region from its JSON form ({"mask", "seed", "temperature"})."""
    if not isinstance(value, dict):
        raise ValueError(f"a region must be {{\"mask\", \"seed\", \"temperature\"}}, "
                         f"got {value!r}")
    return Region(_mask_text(value.get("mask"), "region mask"),
                  parse_seed(value.get("seed"), "region seed"),
                  parse_temperature(value.get("temperature"), "region temperature"))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def temperature_of(settings: Settings, hr_size: tuple[int, int]) -> float | Tensor:
    """The base sample's temperature: a number, or a map where a brush painted."""
    if settings.brush is None:
        return settings.temperature
    painted = mask_from_data_url(settings.brush.mask, hr_size)
    return torch.where(painted, settings.brush.temperature, settings.temperature).float()


@torch.inference_mode()
def base_sample(
    model: SRFlow, prepared: PreparedLR, settings: Settings
) -> tuple[list[Tensor], Tensor]:
    """(latents, image) of step 1: the seeded sample at the (brushed) temperature."""
    lr, s = prepared.lr, model.config.scale
    hr_size = (lr.shape[-2] * s, lr.shape[-1] * s)
    temperatures = model.level_temperatures(temperature_of(settings, hr_size), lr)
    generator = _generator(settings.seed)
    latents = [torch.randn(1, *shape, generator=generator) * (
                   t.cpu() if isinstance(t, Tensor) else t)
               for shape, t in zip(model.latent_shapes(*hr_size), temperatures, strict=True)]
    return latents, _decoded(model, prepared, latents)


def _decoded(model: SRFlow, prepared: PreparedLR, latents: list[Tensor]) -> Tensor:
    """Decode CPU latents on the model's device; the image back on the CPU."""
    device = prepared.lr.device
    image = model.decode(prepared.lr, [z.to(device) for z in latents], cond=prepared)
    return image.float().cpu()


@torch.inference_mode()
def apply_region(
    model: SRFlow, prepared: PreparedLR, latents: list[Tensor], image: Tensor, region: Region
) -> tuple[list[Tensor], Tensor]:
    """(latents, image) after re-sampling `region` (step 2 of the module docstring)."""
    mask = mask_from_data_url(region.mask, tuple(image.shape[-2:]))
    if not mask.any():
        raise ValueError("the region to re-sample is empty: paint it first")
    latents = redraw_region(model, prepared.lr, latents, mask, region.temperature,
                            _generator(region.seed))
    return latents, torch.where(mask, _decoded(model, prepared, latents), image)


def render(model: SRFlow, prepared: PreparedLR, settings: Settings) -> Tensor:
    """The image of `settings` (not clamped; it may hold NaN/inf where the model fails)."""
    latents, image = base_sample(model, prepared, settings)
    for region in settings.regions:
        latents, image = apply_region(model, prepared, latents, image, region)
    return image


def render_files(
    model: SRFlow, inputs, out_dir: str | Path, settings_path: str | Path
) -> tuple[list[Path], list[str]]:
    """`cinn-sr sample --settings FILE`: each LR image file rendered with the settings as
    `{stem}_explore.png`. Returns the written files and the skipped unreadable inputs (as
    `sample` skips them; none readable is an ImageReadError). Settings that do not fit an
    image, or NaN/inf pixels, are a ValueError naming it; nothing is written for it."""
    from cinn_sr.datasets import ImageReadError, read_image, to_tensor, write_image
    from cinn_sr.sampling import NONFINITE_REMEDY, expand_inputs, nonfinite_fraction

    settings = Settings.read(settings_path)
    files = expand_inputs(inputs)
    written, skipped = [], []
    for path in files:
        try:
            rgb = read_image(path)
        except ImageReadError as error:
            skipped.append(str(error))
            continue
        lr = to_tensor(rgb)[None].to(next(model.parameters()).device)
        try:
            image = render(model, model.prepare(lr), settings)
        except ValueError as error:
            raise ValueError(f"{path.name}: {error}") from None
        fraction = float(nonfinite_fraction(image).max())
        if fraction > 0:
            raise ValueError(f"{path.name}: NaN/inf in {100 * fraction:.1f} % of the pixels; "
                             f"{NONFINITE_REMEDY}")
        out = Path(out_dir) / f"{path.stem}_explore.png"
        written.append(write_image(out, image[0].clamp(0, 1)))
    if len(skipped) == len(files):
        raise ImageReadError(f"no readable input image: {'; '.join(skipped)}")
    return written, skipped
