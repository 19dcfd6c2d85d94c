"""The weights a run starts from: a pre-trained encoder or a whole model to fine-tune.

`train --encoder FILE` and `pretrain --init FILE` read RRDB weights (`read_encoder_file`);
`train --init FILE` reads a whole SRFlow (`read_model_file`). Both check the file against
the run's preset and carry how the file represents the model into `config.model`.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from cinn_sr.checkpoint import CheckpointError, load
from cinn_sr.config import RunConfig, TrainConfig
from cinn_sr.interop import load_encoder_state
from cinn_sr.model import SRFlow

REPRESENTATION_FIELDS = ("invconv", "rrdb_skip", "scale_fn", "clamp")
"""Fields a whole-model file (`train --init`) sets; the rest must match the preset."""


def read_encoder_file(path: str | Path, config: RunConfig) -> dict[str, Tensor]:
    """Pre-trained RRDB weights for `config`'s model, via `cinn_sr.interop.load_encoder_state`.

    Accepts cinn-sr checkpoints (`pretrain`/`train`), official RRDB/SRFlow files and ESRGAN /
    BasicSR files. The file's global-skip style (`rrdb_skip`) goes into `config.model`; other
    architecture fields must match the preset (a one-line CheckpointError otherwise).
    """
    weights = load_encoder_state(path)
    target = config.model_config()
    for key in ("n_rrdb", "nf", "gc", "in_channels"):
        if key in weights.fields and weights.fields[key] != getattr(target, key):
            raise CheckpointError(
                f"{path}: encoder has {key}={weights.fields[key]}, preset {config.preset} needs "
                f"{getattr(target, key)}: choose a matching --preset"
            )
    if weights.fields.get("scale", target.scale) > target.scale:
        raise CheckpointError(
            f"{path}: a x{weights.fields['scale']} encoder does not fit the x{target.scale} "
            f"preset {config.preset}"
        )
    skip = weights.fields.get("rrdb_skip")
    if skip is not None and skip != target.rrdb_skip:
        config.model = {**config.model, "rrdb_skip": skip}
    return weights.state_dict


def read_model_file(path: str | Path, config: TrainConfig) -> dict[str, Tensor]:
    """Weights of a whole model to fine-tune (`train --init`): a cinn-sr checkpoint or a
    released SRFlow file (anything `cinn_sr.load` reads). Its architecture must be the
    preset's; how it is represented or computed (REPRESENTATION_FIELDS) is taken from the
    file into `config.model`.
    """
    model = load(path)
    loaded, target = model.config, config.model_config()
    differ = [
        f"{k}={getattr(loaded, k)!r} (preset: {getattr(target, k)!r})"
        for k in loaded.to_dict()
        if k not in (*REPRESENTATION_FIELDS, "name") and getattr(loaded, k) != getattr(target, k)
    ]
    if differ:
        raise CheckpointError(
            f"{path}: not a {config.preset} model: {', '.join(differ[:3])}; choose its --preset"
        )
    taken = {k: getattr(loaded, k) for k in REPRESENTATION_FIELDS
             if getattr(loaded, k) != getattr(target, k)}
    config.model = {**config.model, **taken}
    return model.state_dict()


def load_encoder_weights(model: SRFlow, state: dict[str, Tensor], path: str | Path) -> None:
    """Copy RRDB weights into `model.encoder`; a file of a smaller scale lacks upconvs only."""
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    wrong = unexpected + [k for k in missing if not k.startswith("upconv")]
    if wrong:
        raise CheckpointError(
            f"{path}: encoder weights do not fit preset {model.config.name} "
            f"({len(wrong)} tensors differ, e.g. {wrong[0]})"
        )
