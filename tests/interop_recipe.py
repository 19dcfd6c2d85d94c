"""Deterministic weights and inputs for the interop parity tests.

Shared by tests/test_interop.py and tests/data/interop/make_fixtures.py (which ran the public
reference code once to record the expected outputs). A state dict is rebuilt from a list of
key names and shapes (tests/data/interop/official_keys.json) and a seed: the tensors are
filled in sorted key order from one seeded `torch.Generator`, with a scale per kind of tensor
chosen so that every layer does real work (no zero-initialised convs, no identity ActNorms)
and the flow stays well conditioned.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

DATA = Path(__file__).parent / "data" / "interop"

# Small official configurations (reference option names in comments): scale, L, K, nb (RRDB
# blocks), stackRRDB.blocks, CondAffineSeparatedAndCond.hidden_channels; nf = 64 and gc = 32
# are fixed by the reference's 320 condition channels.
SMALL_CONFIGS = {
    "small-4x": {"scale": 4, "L": 3, "K": 2, "n_rrdb": 4, "stack_blocks": [0, 1, 2, 3],
                 "hidden": 64, "weights_seed": 41, "inputs_seed": 42, "lr_hw": [8, 6]},
    "small-8x": {"scale": 8, "L": 4, "K": 2, "n_rrdb": 5, "stack_blocks": [1, 2, 3, 4],
                 "hidden": 32, "weights_seed": 81, "inputs_seed": 82, "lr_hw": [4, 6]},
}
BATCH = 2
ESRGAN_WEIGHTS_SEED = 7
ESRGAN_INPUT_SEED = 8
ESRGAN_LR_HW = [4, 6]


def shapes_of(module: torch.nn.Module) -> dict[str, list[int]]:
    """{key: shape} of a module's state dict, in its order (what the key lists record)."""
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def mark_actnorms_initialised(net: torch.nn.Module) -> None:
    """Mark a reference network's ActNorms (`inited`) as initialised, as loaded weights are."""
    for m in net.modules():
        if hasattr(m, "inited"):
            m.inited = True


def official_keys() -> dict[str, dict[str, list[int]]]:
    """{layout name: {key: shape}} recorded from the reference code and BasicSR."""
    return json.loads((DATA / "official_keys.json").read_text())


def _value(key: str, noise: torch.Tensor) -> torch.Tensor:
    """Scale standard-normal `noise` for the tensor called `key`."""
    if key.endswith("invconv.weight"):
        c = noise.shape[0]
        return torch.eye(c) + noise * (0.2 / math.sqrt(c))
    if "actnorm." in key:
        return noise * 0.05
    if key.endswith(".logs"):
        return noise * 0.05
    if key.endswith(".bias"):
        return noise * 0.02
    fan_in = math.prod(noise.shape[1:])
    if key.endswith(".4.weight") or (".layers." in key and key.endswith(".conv.weight")):
        return noise * (0.25 / math.sqrt(fan_in))
    if ".fFeatures." in key or ".fAffine." in key:
        return noise * 0.05
    if ".RDB" in key or ".rdb" in key:
        return noise * (0.1 * math.sqrt(2.0 / fan_in))
    return noise * math.sqrt(1.0 / fan_in)


def fill(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """A float32 state dict with `shapes`, filled in sorted key order from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return {
        key: _value(key, torch.randn(shapes[key], generator=gen, dtype=torch.float32))
        for key in sorted(shapes)
    }


def inputs(scale: int, lr_hw: list[int], seed: int, batch: int = BATCH):
    """(lr, hr): HR uniform in [0, 1], LR its scale x scale box average."""
    gen = torch.Generator().manual_seed(seed)
    h, w = lr_hw
    hr = torch.rand(batch, 3, h * scale, w * scale, generator=gen)
    return F.avg_pool2d(hr, scale), hr
