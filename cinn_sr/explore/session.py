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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cinn_sr.datasets import OptionError
from cinn_sr.latent import redraw_region
from cinn_sr.model import PreparedLR, SRFlow, check_temperature

SETTINGS_FORMAT = "cinn-sr-explore"
SETTINGS_VERSION = 1


def mask_from_data_url(url: str, size: tuple[int, int]) -> Tensor:
    """A painted mask (PNG data URL; inside where alpha or any colour is above 127) as bool
    [H, W] of `size`; ValueError for anything else."""
    try:
        raw = base64.b64decode(url.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            rgba = np.array(image.convert("RGBA"))
    except (IndexError, ValueError, OSError) as error:
        raise ValueError(f"not a PNG data URL of a mask: {error}") from None
    if rgba.shape[:2] != tuple(size):
        raise ValueError(f"the mask is {rgba.shape[0]}x{rgba.shape[1]}, the SR image "
                         f"{size[0]}x{size[1]}")
    return torch.from_numpy((rgba[..., 3] > 127) & (rgba[..., :3].max(-1) > 127))


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
            if record.get("format") != SETTINGS_FORMAT:
                raise ValueError(f"its format is not {SETTINGS_FORMAT!r}")
            brush = record.get("brush")
            settings = cls(
                seed=int(record["seed"]), temperature=float(record["temperature"]),
                brush=None if brush is None else Brush(str(brush["mask"]),
                                                       float(brush["temperature"])),
                regions=[Region(str(r["mask"]), int(r["seed"]), float(r["temperature"]))
                         for r in record.get("regions", [])],
            )
            for t in (settings.temperature, *(r.temperature for r in settings.regions),
                      *((settings.brush.temperature,) if settings.brush else ())):
                check_temperature(t)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise OptionError(f"not a cinn-sr explore settings file: {error}") from None
        return settings

    @classmethod
    def read(cls, path: str | Path) -> Settings:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            raise OptionError(f"{path}: cannot read settings: {error}") from None


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
    latents = [torch.randn(1, *shape, generator=generator) * t
               for shape, t in zip(model.latent_shapes(*hr_size), temperatures, strict=True)]
    return latents, model.decode(lr, latents, cond=prepared).float().cpu()


@torch.inference_mode()
def apply_region(
    model: SRFlow, prepared: PreparedLR, latents: list[Tensor], image: Tensor, region: Region
) -> tuple[list[Tensor], Tensor]:
    """(latents, image) after re-sampling `region` (step 2 of the module docstring)."""
    mask = mask_from_data_url(region.mask, tuple(image.shape[-2:]))
    latents = redraw_region(model, prepared.lr, latents, mask, region.temperature,
                            _generator(region.seed))
    decoded = model.decode(prepared.lr, latents, cond=prepared).float().cpu()
    return latents, torch.where(mask, decoded, image)


def render(model: SRFlow, prepared: PreparedLR, settings: Settings) -> Tensor:
    """The image of `settings` (not clamped; it may hold NaN/inf where the model fails)."""
    latents, image = base_sample(model, prepared, settings)
    for region in settings.regions:
        latents, image = apply_region(model, prepared, latents, image, region)
    return image


def render_files(
    model: SRFlow, inputs, out_dir: str | Path, settings_path: str | Path
) -> list[Path]:
    """`cinn-sr sample --settings FILE`: each LR image file rendered with the settings as
    `{stem}_explore.png` (NaN/inf is a ValueError: such an image is never written)."""
    from cinn_sr.datasets import read_image, to_tensor, write_image
    from cinn_sr.sampling import NONFINITE_REMEDY, expand_inputs, nonfinite_fraction

    settings = Settings.read(settings_path)
    written = []
    for path in expand_inputs(inputs):
        lr = to_tensor(read_image(path))[None].to(next(model.parameters()).device)
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
    return written
