"""cinn-sr: conditional invertible neural networks for super-resolution (SRFlow on FrEIA)."""

from importlib.metadata import PackageNotFoundError, version

from cinn_sr.checkpoint import CheckpointError, load, load_checkpoint, save_checkpoint
from cinn_sr.latent import (
    content_transfer,
    normalize_latents,
    resample_region,
    restore,
    style_transfer,
)
from cinn_sr.model import SRFlow
from cinn_sr.presets import PRESETS, SRFlowConfig

try:
    __version__ = version("cinn-sr")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "PRESETS",
    "CheckpointError",
    "SRFlow",
    "SRFlowConfig",
    "load",
    "load_checkpoint",
    "save_checkpoint",
    "normalize_latents",
    "resample_region",
    "style_transfer",
    "content_transfer",
    "restore",
]
