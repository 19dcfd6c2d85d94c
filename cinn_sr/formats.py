"""Reading a weights file and telling its format: the pipeline every loader shares.

Loading runs in three steps, in the manner of chaiNNer's spandrel (read, canonicalise the
state dict, then ask a table of architectures, each with a detect and a load):

1. `read_weights`: torch.load(weights_only=True), so a file that needs arbitrary unpickling
   is refused, never executed; every failure is a one-line `CheckpointError`.
2. `canonicalise`: training code wraps the same state dict in different ways (BasicSR's
   `params` / `params_ema`, PyTorch Lightning's `state_dict`, the `module.` prefix of
   (Distributed)DataParallel); undoing that once here means no format has to.
3. `identify`: the first `Format` of a table whose `detect` accepts the weights; its `model`
   and `encoder` functions do the loading. The table is `cinn_sr.checkpoint.FORMATS`: it
   lists the cinn-sr format beside the foreign ones, so it lives with the cinn-sr format. A
   new format is one entry there and the functions the entry names.

Loaders raise CheckpointErrors without the file's name; `named` adds it once.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from cinn_sr.model import SRFlow
from cinn_sr.shipped import resolve_checkpoint

WRAPPERS = ("params_ema", "params", "state_dict")
"""Keys under which training code stores the state dict, preferred first (BasicSR keeps the
EMA weights, which its test options load, beside the raw ones)."""
ARCHS = ("auto", "srflow", "esrgan")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit: the message is one line for the user."""


def first_line(error: Exception) -> str:
    """The first sentence of an exception's message (torch's are paragraphs), or its type."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return text.splitlines()[0].split(". ")[0][:200]


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
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(e)})") from e


@dataclass(frozen=True)
class Weights:
    """A file's contents as the formats see them: `state`, a dict (name -> tensor, or a
    cinn-sr checkpoint's fields), and the `wrapper` key it was found under, if any."""

    state: dict
    wrapper: str | None = None

    def has(self, prefix: str) -> bool:
        """Whether some key starts with `prefix`."""
        return any(isinstance(k, str) and k.startswith(prefix) for k in self.state)


def strip_module_prefix(state: dict) -> dict:
    """Drop the `module.` prefix that (Distributed)DataParallel adds to every key."""
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def canonicalise(payload: object) -> Weights:
    """The state dict inside a loaded file: out of its wrapper, without a `module.` prefix.

    A dict with a `format` field describes itself (a cinn-sr checkpoint) and stays whole;
    anything but a dict gives empty weights, which no format accepts.
    """
    if not isinstance(payload, dict):
        return Weights({})
    if "format" in payload:
        return Weights(payload)
    wrapper = next((key for key in WRAPPERS if isinstance(payload.get(key), dict)), None)
    state = payload if wrapper is None else payload[wrapper]
    return Weights(strip_module_prefix(state), wrapper)


@dataclass(frozen=True)
class LoadOptions:
    """What the caller knows that the weights do not say.

    stack_blocks: which trunk blocks an SRFlow's conditions stack (the file says how many);
    invconv: the 1x1 convs as an exact LU decomposition ("lu") or the full matrices;
    arch: the global skip of an encoder ("auto": the file's, "srflow": the last trunk
    block's, "esrgan": conv_first's; only an RRDB_trunk file needs to be told);
    noise_steps: how many last flow steps of each level of an NCSR model have its noise
    coupling (the file has the noise subnets in every step).
    """

    stack_blocks: Sequence[int] | None = None
    invconv: str = "lu"
    arch: str = "auto"
    noise_steps: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be 'auto', 'srflow' or 'esrgan', got {self.arch!r}")


@dataclass(frozen=True)
class EncoderWeights:
    """An RRDB encoder's weights in `RRDBEncoder` names and the config fields they fix.

    `fields`: n_rrdb, nf, gc, in_channels, rrdb_skip and scale (2 ** the number of
    upsampling convs in the file).
    """

    state_dict: dict[str, Tensor]
    source: str
    fields: dict


class Report(Protocol):
    """What converting a foreign model did (`srflow_keys.ConversionReport`)."""

    dropped: list[str]

    def line(self) -> str: ...


@dataclass(frozen=True)
class Format:
    """One entry of the format table.

    name: the tag a converted checkpoint records as its source; title: what such a file is,
    for messages; keys: the keys that identify it, for the message on an unknown file (None
    when it is identified otherwise). detect(weights): whether canonical weights are in this
    format, from their keys alone. encoder(weights, options): its RRDB encoder. model(weights,
    options): the whole SRFlow and a Report (None when nothing was converted); None for a
    format that holds an encoder only.
    """

    name: str
    title: str
    keys: str | None
    detect: Callable[[Weights], bool]
    encoder: Callable[[Weights, LoadOptions], EncoderWeights]
    model: Callable[[Weights, LoadOptions], tuple[SRFlow, Report | None]] | None = None


def identify(formats: Sequence[Format], weights: Weights) -> Format:
    """The first of `formats` that detects `weights`; a CheckpointError saying what was
    expected when none does."""
    for candidate in formats:
        if candidate.detect(weights):
            return candidate
    if not weights.state:
        raise CheckpointError("not a cinn-sr checkpoint or weights file: it holds no state dict")
    expected = ", ".join(f"{f.keys} ({f.title})" for f in formats if f.keys)
    raise CheckpointError(f"not a cinn-sr checkpoint or known weights file: expected {expected} "
                          f"keys, found e.g. {next(iter(weights.state))!r}")


@contextmanager
def named(path: str | os.PathLike) -> Iterator[None]:
    """Prefix the CheckpointErrors raised inside with `path`. A malformed tensor can fail deep
    in a loader (indexing a shape, loading a state dict): that is one CheckpointError too."""
    try:
        yield
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
    except (KeyError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{path}: malformed weights ({first_line(e)})") from e


def named_tensors(state: object, what: str) -> dict[str, Tensor]:
    """`state` when it is a non-empty dict of named tensors, else a CheckpointError."""
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"not {what}: the file does not hold a state dict")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"not {what}: entry {bad[0]!r} is not a named tensor")
    return state


def check_names(given: Iterable[str], expected: Iterable[str], where: str) -> None:
    """A CheckpointError naming the first missing or unexpected key."""
    given, expected = set(given), set(expected)
    for problem, keys in (("missing", expected - given), ("unexpected", given - expected)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise CheckpointError(f"{problem} key {where}{min(keys)}{more}")


def check_tensors(given: dict[str, Tensor], expected: dict[str, torch.Size], where: str) -> None:
    """A CheckpointError naming the first missing, unexpected or misshapen key."""
    check_names(given, expected, where)
    for key, shape in expected.items():
        if given[key].shape != shape:
            raise CheckpointError(f"{where}{key} has shape {list(given[key].shape)}, "
                                  f"expected {list(shape)}")
