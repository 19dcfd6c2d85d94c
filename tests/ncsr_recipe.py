"""Small NCSR layouts, their noise maps and the recorded key lists, for the NCSR parity tests.

Shared by tests/test_ncsr_interop.py and tests/data/ncsr/make_fixtures.py (which ran the
public NCSR code once to record the expected outputs). Weights and inputs are rebuilt as for
SRFlow (`interop_recipe.fill` and `interop_recipe.inputs`); the noise coupling's subnets
(`affine.fAffine_std`) are filled by the same rules as the feature coupling's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data" / "ncsr"

# Small NCSR configurations: SRFlow's small ones (interop_recipe.SMALL_CONFIGS) with NCSR's
# noise steps S (the last S[l - 1] flow steps of level l have the noise coupling), so that
# levels without, partly with and wholly with noise steps occur. LR sides are at least 8: the
# reference always computes a 1/8-size copy of the LR features.
SMALL_CONFIGS = {
    "ncsr-small-4x": {"scale": 4, "L": 3, "K": 2, "S": [0, 1, 2], "n_rrdb": 4,
                      "stack_blocks": [0, 1, 2, 3], "hidden": 64, "weights_seed": 141,
                      "inputs_seed": 142, "noise_seed": 143, "lr_hw": [8, 12]},
    "ncsr-small-8x": {"scale": 8, "L": 4, "K": 2, "S": [0, 0, 1, 2], "n_rrdb": 5,
                      "stack_blocks": [1, 2, 3, 4], "hidden": 32, "weights_seed": 181,
                      "inputs_seed": 182, "noise_seed": 183, "lr_hw": [8, 8]},
}
MAPS = ("zero", "noise")
"""The two noise maps of every recorded output: zeros (NCSR's test code) and `noise_map`."""
NOISE_STD = 1.0
"""The non-zero map's standard deviation: larger than NCSR's training noise (at most 0.05),
so that the map's part in the outputs shows well above the test tolerances (a zero-mean map
moves the NLL little: its first-order effects on the log-scales cancel over the pixels)."""


def keys() -> dict[str, dict[str, list[int]]]:
    """{layout name: {key: shape}} recorded from the reference NCSRNet, in state_dict order."""
    return json.loads((DATA / "ncsr_keys.json").read_text())


def noise_map(hr: torch.Tensor, seed: int) -> torch.Tensor:
    """A non-zero HR-size 3-channel noise map: Gaussian, NOISE_STD, from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(hr.shape, generator=gen) * NOISE_STD
