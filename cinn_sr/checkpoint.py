"""cinn-sr checkpoints, and `load`: the SRFlow model of any weights file cinn-sr reads.

Layout (a dict, saved with torch.save, read with torch.load(weights_only=True)):

    {"format": "cinn-sr", "version": 1, "config": SRFlowConfig.to_dict(),
     "model": state_dict, **extra}

`extra` holds whatever the caller adds (training state: step, optimizer, ...); it must be
made of tensors, numbers, strings, lists and dicts so that it loads with weights_only.

`FORMATS` is the one table of weight formats (see `cinn_sr.formats`): this format first,
then released SRFlow models (`cinn_sr.srflow_keys`), released NCSR models
(`cinn_sr.ncsr_keys`) and RRDB encoder files (`cinn_sr.rrdb_keys`). `load` and the loaders
of `cinn_sr.interop` all dispatch through it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cinn_sr.datasets.atomic import atomic_path, ensure_free_space
from cinn_sr.formats import (
    CheckpointError,
    EncoderWeights,
    Format,
    LoadOptions,
    Report,
    Weights,
    canonicalise,
    first_line,
    identify,
    named,
    read_weights,
)
from cinn_sr.model import SRFlow
from cinn_sr.ncsr_keys import NCSR
from cinn_sr.presets import PRESETS, SRFlowConfig
from cinn_sr.rrdb_keys import BASICSR, SRFLOW_RRDB, checked_encoder
from cinn_sr.srflow_keys import SRFLOW

FORMAT = "cinn-sr"
VERSION = 1
RESERVED_KEYS = ("format", "version", "config", "model")


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


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The whole cinn-sr checkpoint dict (config, weights and training extras)."""
    payload = read_weights(path, map_location)
    with named(path):
        return _validate(payload)


def _validate(payload: object) -> dict:
    """`payload` when it is a cinn-sr checkpoint this version reads, else a CheckpointError."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError("not a cinn-sr checkpoint")
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"checkpoint format version {version!r} is newer than this cinn-sr ({VERSION})"
        )
    if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("model"), dict):
        raise CheckpointError("checkpoint lacks its config or weights")
    return payload


def config_of(payload: dict) -> SRFlowConfig:
    """The SRFlowConfig stored in a checkpoint dict."""
    try:
        return SRFlowConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"invalid model config ({e})") from e


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


def model_from_checkpoint(payload: dict) -> SRFlow:
    """Rebuild the SRFlow of a validated cinn-sr checkpoint dict and load its weights."""
    model = SRFlow(config_of(payload))
    fit_weights(model, payload["model"])
    return model


def fit_weights(model: torch.nn.Module, state_dict: dict) -> None:
    """Load a state dict strictly; a mismatch is one CheckpointError line."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else first_line(e)
        raise CheckpointError(f"weights do not fit the model ({detail[:300]})") from e


def load_weights(model: SRFlow, state_dict: dict, path: str | os.PathLike = "checkpoint") -> None:
    """`fit_weights`, its error prefixed with `path`."""
    with named(path):
        fit_weights(model, state_dict)


def _is_cinn_sr(weights: Weights) -> bool:
    return weights.state.get("format") == FORMAT


def _model(weights: Weights, options: LoadOptions) -> tuple[SRFlow, None]:
    return model_from_checkpoint(_validate(weights.state)), None


def _encoder(weights: Weights, options: LoadOptions) -> EncoderWeights:
    payload = _validate(weights.state)
    skip = config_of(payload).rrdb_skip
    state = {k[len("encoder."):]: v for k, v in payload["model"].items()
             if k.startswith("encoder.")}
    return checked_encoder(state, "cinn-sr", skip, options)


CINN_SR = Format(name=FORMAT, title="a cinn-sr checkpoint", keys=None, detect=_is_cinn_sr,
                 encoder=_encoder, model=_model)
FORMATS: tuple[Format, ...] = (CINN_SR, SRFLOW, NCSR, SRFLOW_RRDB, BASICSR)
"""Every weight format cinn-sr reads, tried in this order; a new format is one entry here."""


def _whole_model(weights: Weights, options: LoadOptions) -> tuple[SRFlow, Report | None]:
    """The SRFlow of canonical `weights` and its format's report (`Format.model`)."""
    found = identify(FORMATS, weights)
    if found.model is None:
        raise CheckpointError(f"it is {found.title}, not a whole SRFlow model (use it with "
                              f"`cinn-sr train --encoder FILE` or `cinn-sr convert`)")
    return found.model(weights, options)


def load(
    path: str | os.PathLike,
    map_location="cpu",
    preset: SRFlowConfig | str | None = None,
) -> SRFlow:
    """The SRFlow stored at `path`, in eval mode, on `map_location`.

    Any whole-model file of `FORMATS`: a cinn-sr checkpoint is rebuilt from its own config,
    a released SRFlow or NCSR file converted (stack_blocks, and NCSR's noise steps, from the
    preset of its layout). With
    `preset`, a checkpoint of another architecture raises CheckpointError.
    """
    payload = read_weights(path, map_location)
    with named(path):
        model, _ = _whole_model(canonicalise(payload), LoadOptions())
    if preset is not None:
        check_preset(model.config, preset, path)
    if isinstance(map_location, (str, torch.device)):  # not a remapping function or dict
        model.to(map_location)
    return model.eval()
