"""Released SRFlow, RRDB, ESRGAN and BasicSR weight files -> cinn-sr models (SPEC 1.7).

The SRFlow reference code (andreas128/SRFlow) saves plain state dicts of its `SRFlowNet`:

    RRDB.*                                   the RRDB encoder with its ESRGAN head
    flowUpsamplerNet.layers.N.*              the flow, N in HR -> latent order:
        squeeze                              (no tensors)
        transition step                      actnorm.{bias,logs}, invconv.weight (C x C)
        conditional flow step                + affine.fFeatures.{0,2,4}.* (injector subnet)
                                             + affine.fAffine.{0,2,4}.*   (coupling subnet)
        split                                conv.{weight,bias,logs} (the prior's zero conv)
    flowUpsamplerNet.f.*                     a conv the reference creates and never uses

cinn-sr's flow has one module per reference layer, in the same order
(`SRFlow.flow_modules()`), and the same tensor names below `affine.fFeatures` ->
`injector.subnet`, `affine.fAffine` -> `coupling.subnet`. The configuration is read from the
keys and shapes: scale from the encoder's upsampling convs, L from the squeezes (the indices
without tensors), K and the transition steps per level, the split levels, the RRDB blocks,
`nf`, `gc` and the subnet width. Which trunk blocks are stacked into the condition cannot be
read from the weights (only how many): it comes from the preset of the same layout (the
reference's configs) or from the caller. ActNorms load as initialised; each 1x1 matrix goes
into the full parameterisation as stored or into an exact LU decomposition.

Encoder files (`load_encoder_state`): the official `RRDB_*.pth` files and ESRGAN's RRDBNet
files share one key layout (`conv_first`, `RRDB_trunk.N.RDBk.convj`, `trunk_conv`,
`upconvN`, `HRconv`, `conv_last`); BasicSR's RRDBNet renames them (`body.N.rdbk.convj`,
`conv_body`, `conv_upN`, `conv_hr`) and wraps them in `params` / `params_ema`. ESRGAN and
BasicSR add conv_first's output to the trunk output, SRFlow adds the last trunk block's
(andreas128/SRFlow issue #52): `rrdb_skip` "input" and "trunk" in `SRFlowConfig`.

Every file is read with `torch.load(..., weights_only=True)`: a file that needs arbitrary
unpickling is refused, never executed. Problems are `CheckpointError`s of one line.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cinn_sr.checkpoint import FORMAT, CheckpointError, read_weights
from cinn_sr.encoder import RRDBEncoder
from cinn_sr.model import SRFlow
from cinn_sr.presets import PRESETS, SRFlowConfig

log = logging.getLogger(__name__)

LAYER_KEY = re.compile(r"flowUpsamplerNet\.layers\.(\d+)\.(.+)")
UNUSED_PREFIX = "flowUpsamplerNet.f."
SUBNET_NAMES = (("affine.fFeatures.", "injector.subnet."), ("affine.fAffine.", "coupling.subnet."))
BASICSR_NAMES = (
    (re.compile(r"^body\.(\d+)\.rdb(\d)\."), r"RRDB_trunk.\1.RDB\2."),
    (re.compile(r"^conv_body\."), "trunk_conv."),
    (re.compile(r"^conv_up(\d)\."), r"upconv\1."),
    (re.compile(r"^conv_hr\."), "HRconv."),
)


@dataclass(frozen=True)
class ConversionReport:
    """What `convert_official` did: the inferred config and the tensors used and dropped."""

    config: SRFlowConfig
    n_tensors: int
    n_values: int
    dropped: list[str] = field(default_factory=list)
    stack_blocks_from: str = "preset"

    def line(self) -> str:
        """One-line summary for the terminal."""
        c = self.config
        split = "every level" if c.split_every_level else "reference layout"
        text = (
            f"SRFlow {c.scale}x ({c.name}: L={c.L}, K={c.K}, {c.n_rrdb} RRDB blocks, stacked "
            f"{list(c.stack_blocks)} from {self.stack_blocks_from}, hidden {c.hidden}, splits: "
            f"{split}, invconv {c.invconv}): {self.n_tensors} tensors, "
            f"{self.n_values / 1e6:.2f} M values"
        )
        if self.dropped:
            text += f"; dropped {len(self.dropped)} unused ({', '.join(self.dropped)})"
        return text


@dataclass(frozen=True)
class EncoderWeights:
    """An RRDB encoder's weights in `RRDBEncoder` names and the config fields they fix.

    `fields`: n_rrdb, nf, gc, in_channels, rrdb_skip and scale (2 ** the number of
    upsampling convs in the file).
    """

    state_dict: dict[str, Tensor]
    source: str
    fields: dict


def strip_module_prefix(state: dict) -> dict:
    """Drop the `module.` prefix that (Distributed)DataParallel adds to every key."""
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _tensor_dict(payload: object, what: str) -> dict[str, Tensor]:
    if not isinstance(payload, dict) or not payload:
        raise CheckpointError(f"not {what}: the file does not hold a state dict")
    bad = [k for k, v in payload.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"not {what}: entry {bad[0]!r} is not a named tensor")
    return strip_module_prefix(payload)


def _is_srflow(state: dict) -> bool:
    return any(k.startswith("RRDB.") for k in state) and any(
        k.startswith("flowUpsamplerNet.") for k in state
    )


def _is_esrgan(state: dict) -> bool:
    return "conv_first.weight" in state and any(k.startswith("RRDB_trunk.") for k in state)


def _is_basicsr(state: dict) -> bool:
    return "conv_first.weight" in state and any(k.startswith("body.") for k in state)


def _describe_other(state: dict) -> str:
    state = strip_module_prefix(state)
    if _is_esrgan(state) or _is_basicsr(state):
        return ("it holds an RRDB/ESRGAN encoder only, not an SRFlow model (use it with "
                "`cinn-sr train --encoder FILE`)")
    if "params" in state or "params_ema" in state:
        return ("it is a BasicSR file (params/params_ema), not an SRFlow model (use it with "
                "`cinn-sr train --encoder FILE`)")
    return f"expected RRDB.* and flowUpsamplerNet.* keys, found e.g. {next(iter(state))!r}"


# ---- SRFlow files -----------------------------------------------------------------------


def _layers(state: dict[str, Tensor]) -> dict[int, dict[str, Tensor]]:
    """{layer index: {key below the layer: tensor}} of flowUpsamplerNet.layers.*."""
    layers: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        match = LAYER_KEY.fullmatch(key)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = value
    return layers


def _layer_kind(tensors: dict[str, Tensor] | None) -> str:
    """Q squeeze (no tensors), T transition, S conditional step, P split, ? anything else."""
    if not tensors:
        return "Q"
    if any(k.startswith("affine.") for k in tensors):
        return "S"
    if any(k.startswith("actnorm.") for k in tensors):
        return "T"
    if any(k.startswith("conv.") for k in tensors):
        return "P"
    return "?"


def _first(tensors: dict[str, Tensor], key: str, where: str) -> Tensor:
    if key not in tensors:
        raise CheckpointError(f"missing key {where}.{key}")
    return tensors[key]


def _encoder_fields(state: dict[str, Tensor], prefix: str) -> dict:
    """n_rrdb, nf, gc, in_channels and scale of an RRDB encoder in reference names."""
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


def _flow_layout(layers: dict[int, dict[str, Tensor]]) -> dict:
    """L, K, n_transitions, split_every_level and hidden from the flow layers."""
    if not layers:
        raise CheckpointError("no flowUpsamplerNet.layers.* keys")
    kinds = "".join(_layer_kind(layers.get(i)) for i in range(max(layers) + 1))
    if not re.fullmatch(r"(QT*S*P?)+", kinds):
        bad = next((i for i, k in enumerate(kinds) if k == "?"), None)
        where = f" (layer {bad}: {sorted(layers[bad])[0]})" if bad is not None else ""
        raise CheckpointError(f"flowUpsamplerNet.layers are not an SRFlow flow{where}")
    levels = kinds.split("Q")[1:]
    L = len(levels)
    steps = {level.count("S") for level in levels}
    transitions = {level.count("T") for level in levels}
    if len(steps) != 1 or len(transitions) != 1:
        raise CheckpointError(
            f"levels have different numbers of flow steps {[lv.count('S') for lv in levels]} "
            f"or transition steps; cinn-sr needs the same K on every level"
        )
    split_levels = [i + 1 for i, level in enumerate(levels) if level.endswith("P")]
    if split_levels == list(range(1, L - 1)):
        split_every_level = False
    elif split_levels == list(range(1, L)):
        split_every_level = True
    else:
        raise CheckpointError(f"splits after levels {split_levels} are not a supported layout")
    K = steps.pop()
    layout = {"L": L, "K": K, "n_transitions": transitions.pop(),
              "split_every_level": split_every_level}
    if K:
        first_step = next(i for i, k in enumerate(kinds) if k == "S")
        subnet = _first(layers[first_step], "affine.fFeatures.0.weight",
                        f"flowUpsamplerNet.layers.{first_step}")
        layout["hidden"], layout["cond_channels"] = subnet.shape[0], subnet.shape[1]
    return layout


def _stack_blocks(fields: dict, n_stacked: int, override) -> tuple[tuple[int, ...], str]:
    if override is not None:
        blocks = tuple(int(b) for b in override)
        if len(blocks) != n_stacked:
            raise CheckpointError(f"the file's conditions stack {n_stacked} trunk blocks, "
                                  f"stack_blocks gives {len(blocks)}")
        return blocks, "the caller"
    for name, preset in PRESETS.items():
        if (preset.scale, preset.n_rrdb, preset.nf, len(preset.stack_blocks)) == (
                fields["scale"], fields["n_rrdb"], fields["nf"], n_stacked):
            return preset.stack_blocks, f"preset {name}"
    raise CheckpointError(
        f"cannot tell which {n_stacked} of the {fields['n_rrdb']} RRDB blocks the conditions "
        f"stack (no preset has this layout): pass stack_blocks (convert --stack-blocks)"
    )


def infer_config(state: dict[str, Tensor], stack_blocks=None,
                 invconv: str = "lu") -> tuple[SRFlowConfig, str]:
    """The SRFlowConfig of a released SRFlow state dict, and where stack_blocks came from."""
    fields = _encoder_fields(state, "RRDB.")
    layout = _flow_layout(_layers(state))
    hidden = layout.pop("hidden", 64)
    cond_channels = layout.pop("cond_channels", fields["nf"])
    if cond_channels % fields["nf"]:
        raise CheckpointError(f"condition width {cond_channels} is not a multiple of the "
                              f"encoder width {fields['nf']}")
    stack, source = _stack_blocks(fields, cond_channels // fields["nf"] - 1, stack_blocks)
    try:
        config = SRFlowConfig(**fields, **layout, hidden=hidden, stack_blocks=stack,
                              invconv=invconv)
    except ValueError as e:
        raise CheckpointError(f"inferred configuration is invalid: {e}") from e
    for name, preset in PRESETS.items():
        if preset.replace(invconv=invconv) == config:
            return config.replace(name=name), source
    return config.replace(name=f"srflow-{config.scale}x-custom"), source


def _official_names(module: torch.nn.Module) -> dict[str, str]:
    """{reference key below the layer: our key} for one flow module (1x1 matrix excluded)."""
    names = {}
    for ours in module.state_dict():
        if ours.endswith("initialized") or ours.startswith("invconv."):
            continue
        theirs = ours
        for official, mine in SUBNET_NAMES:
            if ours.startswith(mine):
                theirs = official + ours[len(mine):]
        names[theirs] = ours
    return names


def _check_tensors(given: dict[str, Tensor], expected: dict[str, torch.Size], where: str):
    missing = sorted(set(expected) - set(given))
    if missing:
        raise CheckpointError(f"missing key {where}{missing[0]}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = sorted(set(given) - set(expected))
    if unexpected:
        raise CheckpointError(f"unexpected key {where}{unexpected[0]}"
                              + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    for key, shape in expected.items():
        if given[key].shape != shape:
            raise CheckpointError(f"{where}{key} has shape {list(given[key].shape)}, "
                                  f"expected {list(shape)}")


@torch.no_grad()
def _load_flow_module(module: torch.nn.Module, tensors: dict[str, Tensor], where: str) -> None:
    names = _official_names(module)
    own = module.state_dict()
    expected = {theirs: own[ours].shape for theirs, ours in names.items()}
    has_invconv = hasattr(module, "invconv")
    if has_invconv:
        expected["invconv.weight"] = torch.Size([module.invconv.channels] * 2)
    _check_tensors(tensors, expected, where)
    new_state = dict(own)
    new_state.update({ours: tensors[theirs] for theirs, ours in names.items()})
    for key in new_state:
        if key.endswith("initialized"):
            new_state[key] = torch.tensor(True)
    module.load_state_dict(new_state, strict=True)
    if has_invconv:
        try:
            module.invconv.set_weight_matrix(tensors["invconv.weight"].float())
        except ValueError as e:
            raise CheckpointError(f"{where}invconv.weight: {e}") from e


def convert_official(state_dict: dict, stack_blocks=None,
                     invconv: str = "lu") -> tuple[SRFlow, ConversionReport]:
    """Build the cinn-sr SRFlow that computes what the released SRFlow state dict does."""
    if not isinstance(state_dict, dict) or not state_dict:
        raise CheckpointError("not a released SRFlow state dict: the file holds no state dict")
    if not _is_srflow(strip_module_prefix(state_dict)):
        raise CheckpointError(f"not a released SRFlow state dict: {_describe_other(state_dict)}")
    state = _tensor_dict(state_dict, "an SRFlow state dict")
    dropped = sorted(k for k in state if k.startswith(UNUSED_PREFIX))
    other = sorted(k for k in state if not (k.startswith(("RRDB.", UNUSED_PREFIX))
                                             or LAYER_KEY.fullmatch(k)))
    if other:
        raise CheckpointError(f"unexpected key {other[0]}")
    config, stack_source = infer_config(state, stack_blocks, invconv)
    model = SRFlow(config)

    encoder = {k[len("RRDB."):]: v for k, v in state.items() if k.startswith("RRDB.")}
    _check_tensors(encoder, {k: v.shape for k, v in model.encoder.state_dict().items()}, "RRDB.")
    model.encoder.load_state_dict(encoder, strict=True)

    layers = _layers(state)
    modules = list(model.flow_modules().values())
    if len(modules) != max(layers) + 1:
        raise CheckpointError(f"the flow has {max(layers) + 1} layers, the inferred "
                              f"configuration {len(modules)}")
    for index, module in enumerate(modules):
        _load_flow_module(module, layers.get(index, {}), f"flowUpsamplerNet.layers.{index}.")
    if dropped:
        log.info("dropped tensors the reference never uses: %s", ", ".join(dropped))
    used = [v for k, v in state.items() if not k.startswith(UNUSED_PREFIX)]
    report = ConversionReport(config, len(used), sum(v.numel() for v in used), dropped,
                              stack_source)
    return model.eval(), report


def load_official(state_dict: dict, stack_blocks=None, invconv: str = "lu") -> SRFlow:
    """The SRFlow of a released SRFlow state dict (`cinn_sr.load` calls this)."""
    return convert_official(state_dict, stack_blocks, invconv)[0]


# ---- encoder files ----------------------------------------------------------------------


def _from_basicsr(state: dict[str, Tensor]) -> dict[str, Tensor]:
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in BASICSR_NAMES:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    return renamed


def encoder_weights(payload: object, arch: str = "auto") -> EncoderWeights:
    """RRDB encoder weights from a loaded file (see `load_encoder_state`)."""
    if arch not in ("auto", "srflow", "esrgan"):
        raise ValueError(f"arch must be 'auto', 'srflow' or 'esrgan', got {arch!r}")
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        config = SRFlowConfig.from_dict(payload["config"])
        state = {k[len("encoder."):]: v for k, v in payload["model"].items()
                 if k.startswith("encoder.")}
        source, skip = "cinn-sr", config.rrdb_skip
    elif isinstance(payload, dict) and ("params_ema" in payload or "params" in payload):
        inner = payload.get("params_ema", payload.get("params"))
        state = _from_basicsr(_tensor_dict(inner, "a BasicSR RRDBNet file"))
        source, skip = "basicsr", "input"
    else:
        state = _tensor_dict(payload, "an RRDB encoder file")
        if _is_srflow(state):
            state = {k[len("RRDB."):]: v for k, v in state.items() if k.startswith("RRDB.")}
            source, skip = "srflow", "trunk"
        elif _is_basicsr(state):
            state, source, skip = _from_basicsr(state), "basicsr", "input"
        elif _is_esrgan(state):
            source = "esrgan" if arch == "esrgan" else "srflow-rrdb"
            skip = "input" if arch == "esrgan" else "trunk"
        else:
            raise CheckpointError(f"not an RRDB encoder file: expected conv_first.* and "
                                  f"RRDB_trunk.* (or BasicSR body.*) keys, found e.g. "
                                  f"{next(iter(state))!r}")
    if arch != "auto":
        skip = "input" if arch == "esrgan" else "trunk"
    fields = _encoder_fields(state, "")
    if fields["in_channels"] not in (1, 3):
        raise CheckpointError(f"conv_first takes {fields['in_channels']} channels: a BasicSR "
                              f"x1/x2 (pixel-unshuffle) RRDBNet is not supported")
    config = SRFlowConfig(scale=fields["scale"], L=1, n_rrdb=fields["n_rrdb"], nf=fields["nf"],
                          gc=fields["gc"], in_channels=fields["in_channels"], stack_blocks=())
    expected = {k: v.shape for k, v in RRDBEncoder(config).state_dict().items()}
    _check_tensors(state, expected, "")
    return EncoderWeights(dict(state), source, {**fields, "rrdb_skip": skip})


def load_encoder_state(path: str | os.PathLike, arch: str = "auto") -> EncoderWeights:
    """RRDB encoder weights from any supported file, in `RRDBEncoder` names.

    Files: official `RRDB_*.pth` and ESRGAN RRDBNet state dicts (the same keys: `arch`
    "auto"/"srflow" reads them with SRFlow's global skip, "esrgan" with ESRGAN's), BasicSR
    RRDBNet files (`params_ema` preferred over `params`), released SRFlow files (their
    `RRDB.*`) and cinn-sr checkpoints (their `encoder.*`).
    """
    try:
        return encoder_weights(read_weights(path), arch)
    except CheckpointError as e:
        message = str(e)
        raise CheckpointError(message if message.startswith(str(path)) else f"{path}: {message}") \
            from e


# ---- cinn-sr convert --------------------------------------------------------------------


def _encoder_preset(weights: EncoderWeights, preset: str | None) -> SRFlowConfig:
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


def convert_file(src: str | os.PathLike, out: str | os.PathLike, stack_blocks=None,
                 invconv: str = "lu", preset: str | None = None, arch: str = "auto") -> str:
    """Write a cinn-sr checkpoint from a released SRFlow, RRDB, ESRGAN or BasicSR file.

    An SRFlow file becomes the whole model. An encoder file becomes a model of `preset`
    (default: the preset with the encoder's layout) with these encoder weights and a fresh,
    untrained flow, ready for `cinn-sr train --encoder` or `--resume`. Returns a one-line
    summary.
    """
    from cinn_sr.checkpoint import load_weights, save_checkpoint

    payload = read_weights(src)
    if isinstance(payload, dict) and payload.get("format") == "cinn-sr":
        raise CheckpointError(f"{src}: already a cinn-sr checkpoint; use it as it is")
    name = Path(src).name
    try:
        state = strip_module_prefix(payload) if isinstance(payload, dict) else payload
        if isinstance(state, dict) and _is_srflow(state):
            model, report = convert_official(state, stack_blocks, invconv)
            source = {"file": name, "format": "srflow", "dropped": report.dropped}
            summary = report.line()
        else:
            weights = encoder_weights(payload, arch)
            model = SRFlow(_encoder_preset(weights, preset).replace(invconv=invconv))
            load_weights(model.encoder, weights.state_dict, src)
            source = {"file": name, "format": weights.source}
            summary = (f"RRDB encoder ({weights.source}, {weights.fields['n_rrdb']} blocks, "
                       f"{weights.fields['scale']}x, skip {weights.fields['rrdb_skip']}) in a "
                       f"{model.config.name} model with an untrained flow")
    except CheckpointError as e:
        raise CheckpointError(f"{src}: {e}") from e
    save_checkpoint(out, model, source=source)
    return f"{summary} -> {out}"
