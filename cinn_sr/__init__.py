"""cinn-sr: conditional invertible neural networks for super-resolution (SRFlow on FrEIA).

The public names below are imported on first use (PEP 562), so that `import cinn_sr` and
the command line's `--help` do not pay for importing torch.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cinn-sr")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

_PUBLIC = {
    "PRESETS": "cinn_sr.presets",
    "SRFlowConfig": "cinn_sr.presets",
    "CheckpointError": "cinn_sr.formats",
    "load": "cinn_sr.checkpoint",
    "load_checkpoint": "cinn_sr.checkpoint",
    "save_checkpoint": "cinn_sr.checkpoint",
    "SRFlow": "cinn_sr.model",
    "normalize_latents": "cinn_sr.latent",
    "resample_region": "cinn_sr.latent",
    "style_transfer": "cinn_sr.latent",
    "content_transfer": "cinn_sr.latent",
    "restore": "cinn_sr.latent",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'cinn_sr' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
