"""cinn-sr checkpoints: one file with the weights and the full model config.

Layout (a dict, saved with torch.save, read with torch.load(weights_only=True)):

    {"format": "cinn-sr", "version": 1, "config": SRFlowConfig.to_dict(),
     "model": state_dict, **extra}

`extra` holds whatever the caller adds (training state: step, optimizer, ...); it must be
made of tensors, numbers, strings, lists and dicts so that it loads with weights_only.
Files that are not cinn-sr checkpoints (released SRFlow/ESRGAN state dicts) are handed to
`cinn_sr.interop.load_official` when that module is installed.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import torch

from cinn_sr.datasets.atomic import atomic_path, ensure_free_space
from cinn_sr.model import SRFlow
from cinn_sr.presets import PRESETS, SRFlowConfig
from cinn_sr.shipped import resolve_checkpoint

FORMAT = "cinn-sr"
VERSION = 1
RESERVED_KEYS = ("format", "version", "config", "model")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit: the message is one line for the user."""


def save_checkpoint(path: str | os.PathLike, model: SRFlow, **extra) -> Path:
    """Write `model` (weights + config) and `extra` to `path` atomically; returns the path."""
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra checkpoint keys clash with reserved ones: {', '.join(clash)}")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        **extra,
    }
    return _save_payload(path, payload)


def _save_payload(path: str | os.PathLike, payload: dict) -> Path:
    ensure_free_space(path, _tensor_bytes(payload) + 2**20)
    with atomic_path(path) as temp:
        torch.save(payload, temp)
    return Path(path)


def _tensor_bytes(value) -> int:
    """Bytes of the tensors inside nested dicts and lists (what torch.save will write)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def export_weights(src: str | os.PathLike, out: str | os.PathLike, half: bool = False) -> Path:
    """Write the model of checkpoint `src` (any file `load` reads) as a weights-only cinn-sr
    checkpoint at `out`: no optimizer or training state; `half` stores floating tensors as
    float16 (half the size; `load` returns a float32 model)."""
    model = load(src)
    weights = model.state_dict()
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    payload = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict()}
    return _save_payload(out, {**payload, "model": weights})


def read_weights(path: str | os.PathLike, map_location="cpu") -> object:
    """`torch.load(path, weights_only=True)` of a file or a shipped model's name
    (`cinn_sr.shipped`), with one-line CheckpointErrors (never unpickles code)."""
    try:
        path = resolve_checkpoint(path)
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt, or holds objects other than tensors "
            f"and plain containers, which torch.load(weights_only=True) refuses)"
        ) from e
    except KeyError as e:  # the weights-only unpickler on a text or other non-torch file
        raise CheckpointError(
            f"{path}: not a readable checkpoint (not a file written by torch.save)"
        ) from e
    except Exception as e:  # torch.load on a damaged file raises many kinds of error
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(e)})") from e


def _first_line(error: Exception) -> str:
    """The first sentence of an exception's message (torch's are paragraphs), or its type."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return text.splitlines()[0].split(". ")[0][:200]


def _is_cinn_sr(payload: object) -> bool:
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The whole cinn-sr checkpoint dict (config, weights and training extras)."""
    return _validate(read_weights(path, map_location), path)


def _validate(payload: object, path: str | os.PathLike) -> dict:
    if not _is_cinn_sr(payload):
        raise CheckpointError(f"{path}: not a cinn-sr checkpoint")
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this cinn-sr ({VERSION})"
        )
    if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("model"), dict):
        raise CheckpointError(f"{path}: checkpoint lacks its config or weights")
    return payload


def config_of(payload: dict, path: str | os.PathLike = "checkpoint") -> SRFlowConfig:
    """The SRFlowConfig stored in a checkpoint dict."""
    try:
        return SRFlowConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config ({e})") from e


def _architecture(config: SRFlowConfig) -> dict:
    d = config.to_dict()
    d.pop("name")
    return d


def check_preset(config: SRFlowConfig, expected: SRFlowConfig | str, path="checkpoint") -> None:
    """Raise CheckpointError when `config` is not the architecture of `expected`."""
    target = PRESETS[expected] if isinstance(expected, str) else expected
    mine, theirs = _architecture(config), _architecture(target)
    diff = [k for k in mine if mine[k] != theirs[k]]
    if diff:
        fields = ", ".join(f"{k}={mine[k]!r} (expected {theirs[k]!r})" for k in diff[:3])
        raise CheckpointError(
            f"{path}: checkpoint is a {config.name} model, not {target.name}: {fields}"
        )


def model_from_checkpoint(payload: dict, path: str | os.PathLike = "checkpoint") -> SRFlow:
    """Rebuild the SRFlow of a cinn-sr checkpoint dict and load its weights."""
    model = SRFlow(config_of(payload, path))
    load_weights(model, payload["model"], path)
    return model


def load_weights(model: SRFlow, state_dict: dict, path: str | os.PathLike = "checkpoint") -> None:
    """Load a state dict strictly; a mismatch is one CheckpointError line."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else _first_line(e)
        raise CheckpointError(f"{path}: weights do not fit the model ({detail[:300]})") from e


def load(
    path: str | os.PathLike,
    map_location="cpu",
    preset: SRFlowConfig | str | None = None,
) -> SRFlow:
    """The SRFlow stored at `path`, in eval mode, on `map_location`.

    A cinn-sr checkpoint is rebuilt from its own config; other files go to
    `cinn_sr.interop.load_official(state_dict)` (released SRFlow files). With `preset`,
    a checkpoint of another architecture raises CheckpointError.
    """
    payload = read_weights(path, map_location)
    if _is_cinn_sr(payload):
        model = model_from_checkpoint(_validate(payload, path), path)
    elif importlib.util.find_spec("cinn_sr.interop") is not None and isinstance(payload, dict):
        from cinn_sr import interop

        try:
            model = interop.load_official(payload)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from e
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"{path}: not a cinn-sr or SRFlow checkpoint ({_first_line(e)})"
            ) from e
    else:
        raise CheckpointError(f"{path}: not a cinn-sr checkpoint")
    if preset is not None:
        check_preset(model.config, preset, path)
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)
    return model.eval()
