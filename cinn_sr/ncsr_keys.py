"""Released NCSR model files -> cinn-sr SRFlow models with noise couplings, same outputs.

The NCSR reference code (younggeun-kim/NCSR) saves plain state dicts of its `NCSRNet`: every
key of a released SRFlow file of the same layout (`cinn_sr.srflow_keys`) plus, in every
conditional flow step, the subnet of a noise coupling:

    flowUpsamplerNet.layers.N.affine.fAffine_std.{0,2,4}.*   -> noise_coupling.subnet.*

The reference creates it in every step and uses it only in the last S[l - 1] steps of level
l; the others, like flowUpsamplerNet.f, are dropped and reported. Which steps have one
cannot be read from the keys: S (`noise_steps`) comes from the NCSR preset of the same flow
layout (NCSR's configs) or from the caller, as stack_blocks does. The rest converts as a
released SRFlow file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import Tensor

from cinn_sr.formats import (
    CheckpointError,
    EncoderWeights,
    Format,
    LoadOptions,
    Weights,
    check_names,
    named_tensors,
)
from cinn_sr.model import SRFlow
from cinn_sr.presets import PRESETS, SRFlowConfig
from cinn_sr.rrdb_keys import checked_encoder
from cinn_sr.srflow_keys import (
    LAYER_KEY,
    NOISE_SUBNET,
    SUBNET_NAMES,
    ConversionReport,
    encoder_state,
    has_noise_subnets,
    infer_config,
    load_official_tensors,
    official_names,
    official_tensors,
    preset_name,
    unused_tensors,
)

log = logging.getLogger(__name__)

FEATURE_SUBNET = "affine.fAffine."
NOISE_NAMES = ((NOISE_SUBNET, "noise_coupling.subnet."),)


@dataclass(frozen=True)
class NCSRReport:
    """What `convert_ncsr` did: the SRFlow report of the model with its noise couplings,
    where noise_steps came from, and how many steps' noise subnets were unused."""

    srflow: ConversionReport
    noise_steps_from: str
    n_steps_without: int

    @property
    def dropped(self) -> list[str]:
        """The keys dropped unused."""
        return self.srflow.dropped

    def line(self) -> str:
        """One-line summary for the terminal."""
        text = (f"NCSR {self.srflow.layout()}; noise couplings in the last "
                f"{list(self.srflow.config.noise_steps)} steps of the levels from "
                f"{self.noise_steps_from}")
        what = [f"the noise subnets of the {self.n_steps_without} steps without a noise "
                f"coupling"] if self.n_steps_without else []
        what += unused_tensors(self.dropped)
        if what:
            text += f"; dropped {len(self.dropped)} unused ({', '.join(what)})"
        return text


def ncsr_presets() -> dict[str, SRFlowConfig]:
    """The presets with noise couplings (NCSR's layouts)."""
    return {name: preset for name, preset in PRESETS.items() if preset.noise_steps}


def _noise_steps(config: SRFlowConfig, override) -> tuple[tuple[int, ...], str]:
    """Which flow steps of each level have the noise coupling, and who said so."""
    if override is not None:
        return tuple(int(n) for n in override), "the caller"
    for name, preset in ncsr_presets().items():
        if (preset.scale, preset.L, preset.K) == (config.scale, config.L, config.K):
            return preset.noise_steps, f"preset {name}"
    raise CheckpointError(
        f"cannot tell which of the {config.K} flow steps of each of the {config.L} levels have "
        f"the noise coupling (no NCSR preset has this layout): pass noise_steps "
        f"(convert --noise-steps)"
    )


def infer_ncsr_config(state: dict[str, Tensor], stack_blocks=None, noise_steps=None,
                      invconv: str = "lu") -> tuple[SRFlowConfig, str, str]:
    """The config of an NCSR state dict without its noise subnets, and where stack_blocks
    and noise_steps came from."""
    presets = ncsr_presets()
    config, stack_source = infer_config(state, stack_blocks, invconv, presets)
    steps, noise_source = _noise_steps(config, noise_steps)
    try:
        config = config.replace(noise_steps=steps)
    except ValueError as e:
        raise CheckpointError(f"inferred configuration is invalid: {e}") from e
    return config.replace(name=preset_name(config, presets, "ncsr")), stack_source, noise_source


def _layer_index(key: str) -> int:
    return int(LAYER_KEY.fullmatch(key).group(1))


def _split_noise(noise: dict[str, Tensor], model: SRFlow) -> tuple[dict[str, Tensor], list[str]]:
    """The noise-subnet tensors of the steps with a noise coupling, and the keys of the
    others; a CheckpointError unless every conditional step has them, with the names of its
    feature coupling's subnet."""
    expected, with_noise = set(), set()
    for index, module in enumerate(model.flow_modules().values()):
        names = official_names(module, SUBNET_NAMES + NOISE_NAMES)
        where = f"flowUpsamplerNet.layers.{index}.{NOISE_SUBNET}"
        expected |= {where + k[len(FEATURE_SUBNET):] for k in names if k.startswith(FEATURE_SUBNET)}
        if any(k.startswith(NOISE_SUBNET) for k in names):
            with_noise.add(index)
    check_names(noise, expected, "")
    used = {k: v for k, v in noise.items() if _layer_index(k) in with_noise}
    return used, sorted(set(noise) - set(used))


def convert_ncsr(state_dict: dict, stack_blocks=None, noise_steps=None,
                 invconv: str = "lu") -> tuple[SRFlow, NCSRReport]:
    """Build the cinn-sr SRFlow that computes what the released NCSR state dict does."""
    state = named_tensors(state_dict, NCSR.title)
    noise = {k: v for k, v in state.items() if NOISE_SUBNET in k and LAYER_KEY.fullmatch(k)}
    srflow = official_tensors({k: v for k, v in state.items() if k not in noise}, NCSR.title)
    config, stack_source, noise_source = infer_ncsr_config(srflow, stack_blocks, noise_steps,
                                                           invconv)
    model = SRFlow(config)
    used, unused = _split_noise(noise, model)
    load_official_tensors(model, {**srflow, **used}, SUBNET_NAMES + NOISE_NAMES)
    dropped = unused + unused_tensors(srflow)
    if dropped:
        log.info("dropped %d tensors the reference never uses: %s", len(dropped),
                 ", ".join(dropped))
    values = [v for k, v in state.items() if k not in dropped]
    n_without = len({_layer_index(k) for k in unused})
    report = ConversionReport(config, len(values), sum(v.numel() for v in values), dropped,
                              stack_source)
    return model.eval(), NCSRReport(report, noise_source, n_without)


def _is_ncsr(weights: Weights) -> bool:
    return weights.has("RRDB.") and weights.has("flowUpsamplerNet.") and has_noise_subnets(weights)


def _model(weights: Weights, options: LoadOptions) -> tuple[SRFlow, NCSRReport]:
    return convert_ncsr(weights.state, options.stack_blocks, options.noise_steps,
                        options.invconv)


def _encoder(weights: Weights, options: LoadOptions) -> EncoderWeights:
    state = named_tensors(weights.state, NCSR.title)
    return checked_encoder(encoder_state(state), "ncsr", "trunk", options)


NCSR = Format(
    name="ncsr", title="a released NCSR model",
    keys="RRDB.* and flowUpsamplerNet.layers.N.affine.fAffine_std.*",
    detect=_is_ncsr, encoder=_encoder, model=_model,
)
