"""Weights files of other projects in cinn-sr: encoder weights to train on, and conversion.

`load_encoder_state` gives the RRDB encoder of any file of `cinn_sr.checkpoint.FORMATS`
(`cinn-sr train --encoder`): official `RRDB_*.pth` and ESRGAN RRDBNet files, BasicSR
RRDBNet files, released SRFlow and NCSR models and cinn-sr checkpoints. `convert_file`
writes a cinn-sr checkpoint from a foreign file (`cinn-sr convert`). The key mappings are in
`cinn_sr.srflow_keys` and `cinn_sr.ncsr_keys` (whole models) and `cinn_sr.rrdb_keys`
(encoders).

Every file is read with `torch.load(..., weights_only=True)`: a file that needs arbitrary
unpickling is refused, never executed. Problems are `CheckpointError`s of one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from cinn_sr.checkpoint import CINN_SR, FORMATS, fit_weights, save_checkpoint
from cinn_sr.formats import (
    CheckpointError,
    EncoderWeights,
    LoadOptions,
    Weights,
    canonicalise,
    identify,
    named,
    read_weights,
)
from cinn_sr.model import SRFlow
from cinn_sr.presets import PRESETS, SRFlowConfig


def encoder_weights(payload: object, arch: str = "auto") -> EncoderWeights:
    """RRDB encoder weights from a loaded file (see `load_encoder_state`)."""
    options = LoadOptions(arch=arch)
    weights = canonicalise(payload)
    return identify(FORMATS, weights).encoder(weights, options)


def load_encoder_state(path: str | os.PathLike, arch: str = "auto") -> EncoderWeights:
    """RRDB encoder weights from any supported file, in `RRDBEncoder` names.

    Files: official `RRDB_*.pth` and ESRGAN RRDBNet state dicts (the same keys: `arch`
    "auto"/"srflow" reads them with SRFlow's global skip, "esrgan" with ESRGAN's), BasicSR
    RRDBNet files (`params_ema` preferred over `params`), released SRFlow files (their
    `RRDB.*`) and cinn-sr checkpoints (their `encoder.*`).
    """
    payload = read_weights(path)
    with named(path):
        return encoder_weights(payload, arch)


def _encoder_preset(weights: EncoderWeights, preset: str | None) -> SRFlowConfig:
    """`preset`, or the one preset with the encoder's layout, with the encoder's skip."""
    f = weights.fields
    if preset is not None:
        config = PRESETS[preset]
    else:
        match = [p for p in PRESETS.values()
                 if (p.scale, p.n_rrdb, p.nf, p.gc) == (f["scale"], f["n_rrdb"], f["nf"], f["gc"])]
        if not match:
            raise CheckpointError(f"no preset has a {f['scale']}x encoder with {f['n_rrdb']} RRDB "
                                  f"blocks of width {f['nf']}: pass a preset")
        config = match[0]
    return config.replace(rrdb_skip=f["rrdb_skip"])


def _converted(weights: Weights, options: LoadOptions,
               preset: str | None) -> tuple[SRFlow, dict, str]:
    """The model of foreign `weights`, its source fields and a one-line summary."""
    found = identify(FORMATS, weights)
    if found is CINN_SR:
        raise CheckpointError("already a cinn-sr checkpoint; use it as it is")
    if found.model is not None:
        model, report = found.model(weights, options)
        return model, {"format": found.name, "dropped": report.dropped}, report.line()
    encoder = found.encoder(weights, options)
    model = SRFlow(_encoder_preset(encoder, preset).replace(invconv=options.invconv))
    fit_weights(model.encoder, encoder.state_dict)
    f = encoder.fields
    summary = (f"RRDB encoder ({encoder.source}, {f['n_rrdb']} blocks, {f['scale']}x, skip "
               f"{f['rrdb_skip']}) in a {model.config.name} model with an untrained flow")
    return model, {"format": encoder.source}, summary


def convert_file(src: str | os.PathLike, out: str | os.PathLike, stack_blocks=None,
                 invconv: str = "lu", preset: str | None = None, arch: str = "auto",
                 noise_steps=None) -> str:
    """Write a cinn-sr checkpoint from a released SRFlow, NCSR, RRDB, ESRGAN or BasicSR file.

    An SRFlow or NCSR file becomes the whole model (`noise_steps`: NCSR's S, default the
    preset's). An encoder file becomes a model of `preset`
    (default: the preset with the encoder's layout) with these encoder weights and a fresh,
    untrained flow, ready for `cinn-sr train --encoder` or `--resume`. Returns a one-line
    summary.
    """
    options = LoadOptions(stack_blocks, invconv, arch, noise_steps)
    payload = read_weights(src)
    with named(src):
        model, source, summary = _converted(canonicalise(payload), options, preset)
    save_checkpoint(out, model, source={"file": Path(src).name, **source})
    return f"{summary} -> {out}"
