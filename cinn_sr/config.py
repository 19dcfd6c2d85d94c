"""Run configurations for `cinn-sr train` and `cinn-sr pretrain`, read from TOML.

A configuration is resolved from four layers, each overriding the one before:

    dataclass defaults  <  the preset's recipe  <  the --config TOML file  <  command line

The TOML file is flat: its keys are the long option names with `_` (or `-`) between words,
e.g. ``batch_size = 8``; a ``[model]`` table overrides fields of the preset's
`SRFlowConfig` (``[model] scale_fn = "softclamp"``). The resolved configuration is written as
``config.toml`` into the run folder and stored inside every checkpoint; either can be passed
back with ``--config``.

The preset's recipe: full presets (div2k-4x, div2k-8x, celeba-8x) use the numbers of the
SRFlow paper's experiments (section 5; flow: Adam 5e-4, betas (0.9, 0.999), lr halved at
50/75/90/95 % of 200 k iterations, batch 12 at 4x and 16 at 8x; RRDB pre-training: Adam
2e-4, betas (0.9, 0.99), cosine restarts every 50 k down to 1e-7, batch 16, 200 k
iterations). The tiny presets shrink iterations, batch and logging intervals so a run takes
minutes on a CPU.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from cinn_sr.datasets.atomic import atomic_write_text
from cinn_sr.presets import PRESETS, SRFlowConfig
from cinn_sr.presets import preset as preset_config

GAUSSIAN_NOISE_SIGMA = 4.0 / math.sqrt(3.0) / 255.0
"""Std of the paper's Gaussian dequantisation noise on HR values in [0, 1]."""

NOISE_KINDS = ("gaussian", "uniform", "none")
COMMAND_LINE = "command line"
"""The source name of command-line values in error messages."""


class ConfigError(ValueError):
    """A bad key or value in a configuration; the message is one line naming the key.

    `from_command_line` is true when the value came from the command line (a usage error).
    """

    def __init__(self, message: str, from_command_line: bool = False) -> None:
        super().__init__(message)
        self.from_command_line = from_command_line


@dataclass
class RunConfig:
    """Options shared by flow training and RRDB pre-training."""

    data: str | None = None
    """HDF5 patch file (`cinn-sr pack`); none: the embedded default (scikit-image photos)."""
    preset: str | None = None
    """Model preset; none: tiny-4x for the embedded data, div2k-<scale>x for a patch file."""
    out: str | None = None
    """Run folder; none: a new folder runs/<date>-<preset>-<n>."""
    val: str | None = None
    """Validation patch file or HR image folder; none: the held-out default photo."""
    iterations: int = 200_000
    batch_size: int = 16
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    workers: int = 4
    """DataLoader worker processes (0: load in the training process)."""
    checkpoint_every: int = 5000
    keep_checkpoints: int = 5
    val_every: int = 5000
    """Validation metrics and a sample grid every this many steps (and at the end)."""
    val_count: int = 16
    """Validation patches or images used at each validation."""
    max_nonfinite: int = 20
    """Stop after this many consecutive steps with a non-finite loss or gradient."""
    nproc: int = 1
    """Processes to launch with torchrun (DistributedDataParallel); 1: this process only."""
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of the preset's SRFlowConfig fields."""

    def model_config(self) -> SRFlowConfig:
        """The model this run trains: the preset with the `model` overrides."""
        return preset_config(self.preset, **self.model)


@dataclass
class TrainConfig(RunConfig):
    """Maximum-likelihood training of the flow (`cinn-sr train`)."""

    encoder: str | None = None
    """Pre-trained RRDB: a `cinn-sr pretrain` checkpoint or an ESRGAN/BasicSR/SRFlow file."""
    batch_size: int = 12
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_milestones: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95)
    """Fractions of `iterations` at which the learning rate is multiplied by `lr_gamma`."""
    lr_gamma: float = 0.5
    noise: str = "gaussian"
    """Dequantisation of HR: "gaussian" (paper, sigma = 4/sqrt(3)/255), "uniform"
    (U(-0.5, 0.5)/32, the reference code's unused path) or "none"."""
    noise_max_std: float = 0.0
    """NCSR's training noise (the ncsr presets' recipe: 0.05 at 4x, 0.03 at 8x): per image a
    std drawn in [0, noise_max_std], that Gaussian noise added to the HR (and its downscale to
    the LR), the noise map given to the model's noise couplings; 0: off (SRFlow)."""
    freeze_encoder_fraction: float = 0.5
    """Fraction of iterations with a pre-trained encoder (--encoder) frozen; 0: never."""
    encoder_bf16: bool = False
    """On CUDA, run the encoder under bfloat16 autocast (the flow stays float32)."""
    init: str | None = None
    """Fine-tune this whole model (a cinn-sr checkpoint or a released SRFlow file) from
    step 0 with a fresh optimizer."""
    compile: bool = False
    """Run the flow through torch.compile (after the ActNorm initialisation)."""
    memory_saving: bool = False
    """Backpropagate through the flow by inversion and checkpoint the encoder trunk
    (`cinn_sr.memory`): the same gradients, with activation memory flat in depth."""


@dataclass
class PretrainConfig(RunConfig):
    """L1 pre-training of the RRDB encoder with its ESRGAN head (`cinn-sr pretrain`)."""

    init: str | None = None
    """Start from these RRDB weights (a cinn-sr checkpoint or an ESRGAN/BasicSR file)."""
    restart_every: int = 50_000
    """Period of the cosine schedule's warm restarts, in iterations."""
    eta_min: float = 1e-7


FULL_PRESETS = ("div2k-4x", "div2k-8x", "celeba-8x", "ncsr-4x", "ncsr-8x")

TINY_RECIPE: dict[str, Any] = {
    "iterations": 300,
    "batch_size": 8,
    "workers": 0,
    "checkpoint_every": 100,
    "keep_checkpoints": 3,
    "val_every": 100,
    "val_count": 4,
}


SMALL_PRESETS = ("small-4x",)
SMALL_RECIPE: dict[str, Any] = {
    "iterations": 2000,
    "batch_size": 8,
    "workers": 0,
    "checkpoint_every": 250,
    "keep_checkpoints": 2,
    "val_every": 250,
    "val_count": 8,
}
"""The small presets' recipe (`recipes/small-4x/`): a couple of CPU hours in all."""
SMALL_PRETRAIN_RECIPE: dict[str, Any] = {
    **SMALL_RECIPE, "iterations": 2500, "batch_size": 16, "lr": 1e-3, "restart_every": 2500,
}


def preset_recipe(cls: type[RunConfig], preset: str) -> dict[str, Any]:
    """The preset's layer of defaults for `cls` (the paper's recipe for the full presets)."""
    recipe: dict[str, Any] = {}
    scale = PRESETS[preset].scale
    if cls is TrainConfig:
        recipe["batch_size"] = 12 if scale == 4 else 16
        if PRESETS[preset].noise_steps:  # NCSR's code/confs/4X.yml, 8X.yml
            recipe.update(noise_max_std=0.05 if scale == 4 else 0.03, lr=2e-4, betas=(0.9, 0.99))
    if preset in SMALL_PRESETS:
        recipe.update(SMALL_PRETRAIN_RECIPE if cls is PretrainConfig else SMALL_RECIPE)
    elif preset not in FULL_PRESETS:
        recipe.update(TINY_RECIPE)
        if cls is PretrainConfig:
            recipe["restart_every"] = TINY_RECIPE["iterations"]
            recipe["lr"] = 1e-3
    return recipe


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_value(name: str, value: Any, hint: Any, source: str) -> Any:
    """`value` converted to the field's type, or a ConfigError naming `name` and `source`."""

    def bad(expected: str) -> ConfigError:
        return ConfigError(
            f"{source}: '{name}' must be {expected}, got {value!r}",
            from_command_line=source == COMMAND_LINE,
        )

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise bad("a list of numbers")
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise bad(f"a list of {len(args)} numbers")
        return tuple(_check_value(name, v, float, source) for v in value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad("a table")
        return dict(value)
    raise TypeError(f"unsupported field type {hint}")


def _check_layer(cls: type[RunConfig], layer: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Normalise keys (`-` -> `_`), reject unknown keys, check and convert values."""
    hints = _field_types(cls)
    checked = {}
    for raw_key, value in layer.items():
        key = raw_key.replace("-", "_")
        if key not in hints:
            raise ConfigError(
                f"{source}: unknown key '{raw_key}' (known: {', '.join(sorted(hints))})"
            )
        checked[key] = _check_value(key, value, hints[key], source)
    if "model" in checked:
        known = {f.name for f in dataclasses.fields(SRFlowConfig)} - {"name"}
        for key in checked["model"]:
            if key not in known:
                raise ConfigError(
                    f"{source}: unknown key 'model.{key}' (known: {', '.join(sorted(known))})"
                )
    return checked


def _validate(config: RunConfig, sources: Mapping[str, str]) -> None:
    """Range checks on the resolved values; errors name the key and where it was set."""

    def fail(key: str, why: str) -> None:
        source = sources.get(key, "preset defaults")
        raise ConfigError(
            f"{source}: '{key}' {why}, got {getattr(config, key)!r}",
            from_command_line=source == COMMAND_LINE,
        )

    if config.preset not in PRESETS:
        fail("preset", f"must be one of {', '.join(PRESETS)}")
    for key in ("iterations", "batch_size", "checkpoint_every", "val_every", "val_count", "nproc"):
        if getattr(config, key) < 1:
            fail(key, "must be >= 1")
    for key in ("workers", "seed"):
        if getattr(config, key) < 0:
            fail(key, "must be >= 0")
    if config.seed >= 2**32:  # derived seeds (seed + 1000 * rank + step) must fit torch's 64 bits
        fail("seed", "must be < 2**32")
    if config.batch_size % config.nproc:
        fail("batch_size", f"must be divisible by nproc ({config.nproc}): it is the total")
    if config.keep_checkpoints < 1:
        fail("keep_checkpoints", "must be >= 1")
    if config.max_nonfinite < 1:
        fail("max_nonfinite", "must be >= 1")
    if config.lr <= 0:
        fail("lr", "must be > 0")
    if not all(0 <= b < 1 for b in config.betas):
        fail("betas", "must be two numbers in [0, 1)")
    if config.weight_decay < 0:
        fail("weight_decay", "must be >= 0")
    device = config.device
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        fail("device", "must be auto, cpu, cuda or cuda:N")
    if isinstance(config, TrainConfig):
        if config.noise not in NOISE_KINDS:
            fail("noise", f"must be one of {', '.join(NOISE_KINDS)}")
        if not 0 <= config.freeze_encoder_fraction <= 1:
            fail("freeze_encoder_fraction", "must be in [0, 1]")
        milestones = config.lr_milestones
        if not all(0 < m < 1 for m in milestones) or list(milestones) != sorted(milestones):
            fail("lr_milestones", "must be increasing fractions in (0, 1)")
        if not 0 < config.lr_gamma <= 1:
            fail("lr_gamma", "must be in (0, 1]")
        if config.compile and config.memory_saving:
            fail("compile", "cannot be combined with memory_saving (it runs the flow node by node)")
        if config.init is not None and config.encoder is not None:
            fail("encoder", "cannot be combined with init (the whole model, encoder included)")
    if isinstance(config, PretrainConfig):
        if config.restart_every < 1:
            fail("restart_every", "must be >= 1")
        if not 0 <= config.eta_min < config.lr:
            fail("eta_min", "must be in [0, lr)")
    try:
        PRESETS[config.preset].replace(**config.model)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{sources.get('model')}: bad [model] table: {error}") from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML file's table; syntax errors become a one-line ConfigError."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (TOML is UTF-8)") from None


def default_preset(cls: type[RunConfig], data: str | None) -> str:
    """tiny-4x for the embedded data; for a patch file the full preset of its scale."""
    if data is None:
        return "tiny-4x"
    from cinn_sr.datasets.patch_dataset import read_patch_attrs

    try:
        scale = read_patch_attrs(data)["scale"]
    except ValueError as error:
        raise ConfigError(f"patch file: {error}") from None
    return "div2k-8x" if scale == 8 else "div2k-4x"


def resolve(
    cls: type[RunConfig],
    file: Mapping[str, Any] | None = None,
    cli: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
    file_name: str = "config file",
) -> RunConfig:
    """The configuration from defaults < preset recipe < `file` < `cli` (see module doc).

    `base` (e.g. a resumed checkpoint's configuration) replaces the defaults and the recipe.
    Command-line values that are None count as not given.
    """
    file_layer = _check_layer(cls, file or {}, file_name)
    cli_layer = _check_layer(
        cls, {k: v for k, v in (cli or {}).items() if v is not None}, COMMAND_LINE
    )
    base_layer = _check_layer(cls, base or {}, "checkpoint configuration")
    merged = {**base_layer, **file_layer, **cli_layer}
    merged["model"] = {
        **base_layer.get("model", {}),
        **file_layer.get("model", {}),
        **cli_layer.get("model", {}),
    }
    sources = {key: "checkpoint configuration" for key in base_layer}
    sources.update({key: file_name for key in file_layer})
    sources.update({key: COMMAND_LINE for key in cli_layer})
    preset = merged.get("preset") or default_preset(cls, merged.get("data"))
    if preset not in PRESETS:
        raise ConfigError(
            f"{sources['preset']}: 'preset' must be one of {', '.join(PRESETS)}, got {preset!r}"
        )
    recipe = {} if base else preset_recipe(cls, preset)
    config = cls(**{**recipe, **merged, "preset": preset})
    _validate(config, sources)
    return config


def to_toml_dict(config: RunConfig) -> dict[str, Any]:
    """The configuration as a TOML-ready dict: None values left out, tuples as lists."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None or (f.name == "model" and not value):
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    if "model" in out:
        out["model"] = out.pop("model")
    return out


def write_toml(config: RunConfig, path: str | Path) -> None:
    """Write the resolved configuration atomically (temporary file, then rename)."""
    atomic_write_text(path, tomli_w.dumps(to_toml_dict(config)))
