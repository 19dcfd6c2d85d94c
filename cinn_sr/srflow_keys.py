"""Released SRFlow model files -> cinn-sr SRFlow models with the same outputs.

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
into the full parameterisation as stored or into an exact LU decomposition. Released NCSR
files (`cinn_sr.ncsr_keys`) are SRFlow's plus noise subnets and convert through the same
steps: `official_tensors`, `infer_config` (with NCSR's presets), `load_official_tensors`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cinn_sr.formats import (
    CheckpointError,
    EncoderWeights,
    Format,
    LoadOptions,
    Weights,
    check_tensors,
    named_tensors,
)
from cinn_sr.model import SRFlow
from cinn_sr.presets import PRESETS, SRFlowConfig
from cinn_sr.rrdb_keys import checked_encoder, encoder_fields

log = logging.getLogger(__name__)

LAYER_KEY = re.compile(r"flowUpsamplerNet\.layers\.(\d+)\.(.+)")
UNUSED_PREFIX = "flowUpsamplerNet.f."
SUBNET_NAMES = (("affine.fFeatures.", "injector.subnet."), ("affine.fAffine.", "coupling.subnet."))
NOISE_SUBNET = "affine.fAffine_std."
"""The subnets of NCSR's noise couplings (`cinn_sr.ncsr_keys`): an SRFlow file has none."""


@dataclass(frozen=True)
class ConversionReport:
    """What `convert_official` did: the inferred config and the tensors used and dropped."""

    config: SRFlowConfig
    n_tensors: int
    n_values: int
    dropped: list[str] = field(default_factory=list)
    stack_blocks_from: str = "preset"

    def layout(self) -> str:
        """The inferred layout and what was used, as `line` says it after the model's name."""
        c = self.config
        split = "every level" if c.split_every_level else "reference layout"
        return (
            f"{c.scale}x ({c.name}: L={c.L}, K={c.K}, {c.n_rrdb} RRDB blocks, stacked "
            f"{list(c.stack_blocks)} from {self.stack_blocks_from}, hidden {c.hidden}, splits: "
            f"{split}, invconv {c.invconv}): {self.n_tensors} tensors, "
            f"{self.n_values / 1e6:.2f} M values"
        )

    def line(self) -> str:
        """One-line summary for the terminal."""
        text = f"SRFlow {self.layout()}"
        if self.dropped:
            text += f"; dropped {len(self.dropped)} unused ({', '.join(self.dropped)})"
        return text


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


def _split_every_level(levels: list[str]) -> bool:
    """Whether every level but the last splits (True) or all but the first and last do."""
    split_levels = [i + 1 for i, level in enumerate(levels) if level.endswith("P")]
    if split_levels == list(range(1, len(levels) - 1)):
        return False
    if split_levels == list(range(1, len(levels))):
        return True
    raise CheckpointError(f"splits after levels {split_levels} are not a supported layout")


def _flow_layout(layers: dict[int, dict[str, Tensor]]) -> dict:
    """L, K, n_transitions, split_every_level and (K > 0) hidden and cond_channels."""
    if not layers:
        raise CheckpointError("no flowUpsamplerNet.layers.* keys")
    kinds = "".join(_layer_kind(layers.get(i)) for i in range(max(layers) + 1))
    if not re.fullmatch(r"(QT*S*P?)+", kinds):
        bad = next((i for i, k in enumerate(kinds) if k == "?"), None)
        where = f" (layer {bad}: {sorted(layers[bad])[0]})" if bad is not None else ""
        raise CheckpointError(f"flowUpsamplerNet.layers are not an SRFlow flow{where}")
    levels = kinds.split("Q")[1:]
    steps = {level.count("S") for level in levels}
    transitions = {level.count("T") for level in levels}
    if len(steps) != 1 or len(transitions) != 1:
        raise CheckpointError(
            f"levels have different numbers of flow steps {[lv.count('S') for lv in levels]} "
            f"or transition steps; cinn-sr needs the same K on every level"
        )
    K = steps.pop()
    layout = {"L": len(levels), "K": K, "n_transitions": transitions.pop(),
              "split_every_level": _split_every_level(levels)}
    if K:
        first_step = kinds.index("S")
        where = f"flowUpsamplerNet.layers.{first_step}."
        subnet = layers[first_step].get("affine.fFeatures.0.weight")
        if subnet is None:
            raise CheckpointError(f"missing key {where}affine.fFeatures.0.weight")
        layout["hidden"], layout["cond_channels"] = subnet.shape[0], subnet.shape[1]
    return layout


def _stack_blocks(fields: dict, n_stacked: int, override,
                  presets: Mapping[str, SRFlowConfig]) -> tuple[tuple[int, ...], str]:
    """Which trunk blocks the conditions stack, and who said so."""
    if override is not None:
        blocks = tuple(int(b) for b in override)
        if len(blocks) != n_stacked:
            raise CheckpointError(f"the file's conditions stack {n_stacked} trunk blocks, "
                                  f"stack_blocks gives {len(blocks)}")
        return blocks, "the caller"
    for name, preset in presets.items():
        if (preset.scale, preset.n_rrdb, preset.nf, len(preset.stack_blocks)) == (
                fields["scale"], fields["n_rrdb"], fields["nf"], n_stacked):
            return preset.stack_blocks, f"preset {name}"
    raise CheckpointError(
        f"cannot tell which {n_stacked} of the {fields['n_rrdb']} RRDB blocks the conditions "
        f"stack (no preset has this layout): pass stack_blocks (convert --stack-blocks)"
    )


def srflow_presets() -> dict[str, SRFlowConfig]:
    """The presets of SRFlow's layouts (without noise couplings)."""
    return {name: preset for name, preset in PRESETS.items() if not preset.noise_steps}


def preset_name(config: SRFlowConfig, presets: Mapping[str, SRFlowConfig], family: str) -> str:
    """The name of the preset `config` is (its invconv aside), else `{family}-{scale}x-custom`."""
    for name, preset in presets.items():
        if preset.replace(invconv=config.invconv) == config:
            return name
    return f"{family}-{config.scale}x-custom"


def infer_config(state: dict[str, Tensor], stack_blocks=None, invconv: str = "lu",
                 presets: Mapping[str, SRFlowConfig] | None = None) -> tuple[SRFlowConfig, str]:
    """The SRFlowConfig of a released SRFlow state dict, and where stack_blocks came from.

    `presets` (default: SRFlow's) give stack_blocks when the caller does not, and the name.
    """
    presets = srflow_presets() if presets is None else presets
    fields = encoder_fields(state, "RRDB.")
    layout = _flow_layout(_layers(state))
    hidden = layout.pop("hidden", 64)
    cond_channels = layout.pop("cond_channels", fields["nf"])
    if cond_channels % fields["nf"]:
        raise CheckpointError(f"condition width {cond_channels} is not a multiple of the "
                              f"encoder width {fields['nf']}")
    stack, source = _stack_blocks(fields, cond_channels // fields["nf"] - 1, stack_blocks,
                                  presets)
    try:
        config = SRFlowConfig(**fields, **layout, hidden=hidden, stack_blocks=stack,
                              invconv=invconv)
    except ValueError as e:
        raise CheckpointError(f"inferred configuration is invalid: {e}") from e
    return config.replace(name=preset_name(config, presets, "srflow")), source


def official_names(module: torch.nn.Module, subnet_names) -> dict[str, str]:
    """{reference key below the layer: our key} for one flow module (1x1 matrix excluded)."""
    names = {}
    for ours in module.state_dict():
        if ours.endswith("initialized") or ours.startswith("invconv."):
            continue
        theirs = ours
        for official, mine in subnet_names:
            if ours.startswith(mine):
                theirs = official + ours[len(mine):]
        names[theirs] = ours
    return names


@torch.no_grad()
def _load_flow_module(module: torch.nn.Module, tensors: dict[str, Tensor], where: str,
                      subnet_names) -> None:
    """Load one reference layer into its flow module, marked initialised. Squeezes and
    splits have no 1x1 conv; steps get theirs through `set_weight_matrix` (full or LU)."""
    names = official_names(module, subnet_names)
    own = module.state_dict()
    expected = {theirs: own[ours].shape for theirs, ours in names.items()}
    invconv = getattr(module, "invconv", None)
    if invconv is not None:
        expected["invconv.weight"] = torch.Size([invconv.channels] * 2)
    check_tensors(tensors, expected, where)
    new_state = dict(own)
    new_state.update({ours: tensors[theirs] for theirs, ours in names.items()})
    for key in new_state:
        if key.endswith("initialized"):
            new_state[key] = torch.tensor(True)
    module.load_state_dict(new_state, strict=True)
    if invconv is not None:
        try:
            invconv.set_weight_matrix(tensors["invconv.weight"].float())
        except ValueError as e:
            raise CheckpointError(f"{where}invconv.weight: {e}") from e


def official_tensors(state_dict: dict, title: str) -> dict[str, Tensor]:
    """The named tensors of a released state dict, a CheckpointError on a key outside
    RRDB.*, flowUpsamplerNet.layers.* and the unused flowUpsamplerNet.f.*."""
    state = named_tensors(state_dict, title)
    other = sorted(k for k in state if not (k.startswith(("RRDB.", UNUSED_PREFIX))
                                             or LAYER_KEY.fullmatch(k)))
    if other:
        raise CheckpointError(f"unexpected key {other[0]}")
    return state


def unused_tensors(keys: Iterable[str]) -> list[str]:
    """The keys of the conv the reference creates and never uses (flowUpsamplerNet.f)."""
    return sorted(k for k in keys if k.startswith(UNUSED_PREFIX))


def load_official_tensors(model: SRFlow, state: dict[str, Tensor],
                          subnet_names=SUBNET_NAMES) -> None:
    """Load the reference tensors `state` (flowUpsamplerNet.f aside) into `model`, every one
    checked by name and shape; `subnet_names`: (reference prefix, ours) of the subnets."""
    encoder = encoder_state(state)
    check_tensors(encoder, {k: v.shape for k, v in model.encoder.state_dict().items()}, "RRDB.")
    model.encoder.load_state_dict(encoder, strict=True)

    layers = _layers(state)
    modules = list(model.flow_modules().values())
    if len(modules) != max(layers) + 1:
        raise CheckpointError(f"the flow has {max(layers) + 1} layers, the inferred "
                              f"configuration {len(modules)}")
    for index, module in enumerate(modules):
        _load_flow_module(module, layers.get(index, {}), f"flowUpsamplerNet.layers.{index}.",
                          subnet_names)


def convert_official(state_dict: dict, stack_blocks=None,
                     invconv: str = "lu") -> tuple[SRFlow, ConversionReport]:
    """Build the cinn-sr SRFlow that computes what the released SRFlow state dict does."""
    state = official_tensors(state_dict, SRFLOW.title)
    config, stack_source = infer_config(state, stack_blocks, invconv)
    model = SRFlow(config)
    load_official_tensors(model, state)
    dropped = unused_tensors(state)
    if dropped:
        log.info("dropped tensors the reference never uses: %s", ", ".join(dropped))
    used = [v for k, v in state.items() if k not in dropped]
    report = ConversionReport(config, len(used), sum(v.numel() for v in used), dropped,
                              stack_source)
    return model.eval(), report


def load_official(state_dict: dict, stack_blocks=None, invconv: str = "lu") -> SRFlow:
    """The SRFlow of a released SRFlow state dict, without the report."""
    return convert_official(state_dict, stack_blocks, invconv)[0]


def encoder_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The RRDB.* tensors of a released state dict, in `RRDBEncoder` names."""
    return {k[len("RRDB."):]: v for k, v in state.items() if k.startswith("RRDB.")}


def has_noise_subnets(weights: Weights) -> bool:
    """Whether some key is of an NCSR noise coupling's subnet."""
    return any(isinstance(k, str) and NOISE_SUBNET in k for k in weights.state)


def _is_srflow(weights: Weights) -> bool:
    return (weights.has("RRDB.") and weights.has("flowUpsamplerNet.")
            and not has_noise_subnets(weights))


def _model(weights: Weights, options: LoadOptions) -> tuple[SRFlow, ConversionReport]:
    return convert_official(weights.state, options.stack_blocks, options.invconv)


def _encoder(weights: Weights, options: LoadOptions) -> EncoderWeights:
    state = named_tensors(weights.state, SRFLOW.title)
    return checked_encoder(encoder_state(state), "srflow", "trunk", options)


SRFLOW = Format(
    name="srflow", title="a released SRFlow model", keys="RRDB.* and flowUpsamplerNet.*",
    detect=_is_srflow, encoder=_encoder, model=_model,
)
