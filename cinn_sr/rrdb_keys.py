"""RRDB encoder files (SRFlow's `RRDB_*.pth`, ESRGAN, BasicSR) -> `RRDBEncoder` weights.

The official `RRDB_*.pth` files and ESRGAN's RRDBNet files share one key layout, which is
`RRDBEncoder`'s: `conv_first`, `RRDB_trunk.N.RDBk.convj`, `trunk_conv`, `upconvN`, `HRconv`,
`conv_last`. BasicSR's RRDBNet renames them (`body.N.rdbk.convj`, `conv_body`, `conv_upN`,
`conv_hr`) and saves them under `params` / `params_ema`. The networks differ in the global
skip: ESRGAN and BasicSR add conv_first's output to the trunk output, SRFlow adds the last
trunk block's (andreas128/SRFlow issue #52), `rrdb_skip` "input" and "trunk" in
`SRFlowConfig`. An RRDB_trunk file does not say which network wrote it: it is read with
SRFlow's skip unless the caller says ESRGAN (`LoadOptions.arch`).
"""

from __future__ import annotations

import re

from torch import Tensor

from cinn_sr.encoder import RRDBEncoder
from cinn_sr.formats import (
    CheckpointError,
    EncoderWeights,
    Format,
    LoadOptions,
    Weights,
    check_tensors,
    named_tensors,
)
from cinn_sr.presets import SRFlowConfig

BASICSR_NAMES = (
    (re.compile(r"^body\.(\d+)\.rdb(\d)\."), r"RRDB_trunk.\1.RDB\2."),
    (re.compile(r"^conv_body\."), "trunk_conv."),
    (re.compile(r"^conv_up(\d)\."), r"upconv\1."),
    (re.compile(r"^conv_hr\."), "HRconv."),
)
BASICSR_WRAPPERS = ("params", "params_ema")


def encoder_fields(state: dict[str, Tensor], prefix: str = "") -> dict:
    """n_rrdb, nf, gc, in_channels and scale of an RRDB encoder whose keys start `prefix`."""
    conv_first = state.get(prefix + "conv_first.weight")
    rdb = state.get(prefix + "RRDB_trunk.0.RDB1.conv1.weight")
    if conv_first is None or rdb is None or conv_first.dim() != 4 or rdb.dim() != 4:
        raise CheckpointError(f"missing or malformed key {prefix}conv_first.weight or "
                              f"{prefix}RRDB_trunk.0.RDB1.conv1.weight")
    blocks = {int(m.group(1)) for k in state
              if (m := re.match(re.escape(prefix) + r"RRDB_trunk\.(\d+)\.", k))}
    ups = {int(m.group(1)) for k in state
           if (m := re.match(re.escape(prefix) + r"upconv(\d+)\.", k))}
    if not ups:
        raise CheckpointError(f"missing key {prefix}upconv1.weight")
    return {"n_rrdb": max(blocks) + 1, "nf": conv_first.shape[0], "gc": rdb.shape[0],
            "in_channels": conv_first.shape[1], "scale": 2 ** max(ups)}


def checked_encoder(state: dict[str, Tensor], source: str, skip: str,
                    options: LoadOptions) -> EncoderWeights:
    """`state` (RRDBEncoder names) as EncoderWeights, after checking every name and shape;
    the global skip is `skip` unless `options.arch` names one."""
    fields = encoder_fields(state)
    if fields["in_channels"] not in (1, 3):
        raise CheckpointError(f"conv_first takes {fields['in_channels']} channels: a BasicSR "
                              f"x1/x2 (pixel-unshuffle) RRDBNet is not supported")
    try:
        config = SRFlowConfig(scale=fields["scale"], L=1, n_rrdb=fields["n_rrdb"],
                              nf=fields["nf"], gc=fields["gc"],
                              in_channels=fields["in_channels"], stack_blocks=())
    except ValueError as e:
        raise CheckpointError(f"not a supported RRDB encoder: {e}") from e
    check_tensors(state, {k: v.shape for k, v in RRDBEncoder(config).state_dict().items()}, "")
    if options.arch != "auto":
        skip = "input" if options.arch == "esrgan" else "trunk"
    return EncoderWeights(dict(state), source, {**fields, "rrdb_skip": skip})


def _is_basicsr(weights: Weights) -> bool:
    return "conv_first.weight" in weights.state and (
        weights.wrapper in BASICSR_WRAPPERS or weights.has("body."))


def _is_rrdb_trunk(weights: Weights) -> bool:
    return ("conv_first.weight" in weights.state and weights.has("RRDB_trunk.")
            and not _is_basicsr(weights))


def _rrdb_trunk_encoder(weights: Weights, options: LoadOptions) -> EncoderWeights:
    state = named_tensors(weights.state, SRFLOW_RRDB.title)
    if options.arch == "esrgan":
        return checked_encoder(state, "esrgan", "input", options)
    return checked_encoder(state, "srflow-rrdb", "trunk", options)


def _basicsr_encoder(weights: Weights, options: LoadOptions) -> EncoderWeights:
    renamed = {}
    for key, value in named_tensors(weights.state, BASICSR.title).items():
        for pattern, replacement in BASICSR_NAMES:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    return checked_encoder(renamed, "basicsr", "input", options)


SRFLOW_RRDB = Format(
    name="srflow-rrdb", title="an SRFlow RRDB or ESRGAN encoder",
    keys="conv_first.* and RRDB_trunk.*", detect=_is_rrdb_trunk, encoder=_rrdb_trunk_encoder,
)
BASICSR = Format(
    name="basicsr", title="a BasicSR RRDBNet encoder", keys="conv_first.* and body.*",
    detect=_is_basicsr, encoder=_basicsr_encoder,
)
