"""cinn-sr: conditional invertible neural networks for super-resolution (SRFlow on FrEIA)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cinn-sr")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
