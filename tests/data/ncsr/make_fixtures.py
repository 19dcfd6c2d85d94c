"""Regenerate the NCSR fixtures by running the public NCSR code once (not run by the tests).

    python tests/data/ncsr/make_fixtures.py NCSR_CODE

NCSR_CODE: the `code/` folder of younggeun-kim/NCSR (a `git archive` of commit
85bdaff4320628895fdfda411e7d9824fb1315e4), unchanged except `utils/util.py`, reduced to its
`opt_get` function (the original imports cv2, natsort and torchvision, which the network
modules never use). Only `models/modules/NCSRNet_arch.py` and the modules it imports are run,
on CPU in float32 (torch 2.13), in a scratch folder outside this repository.

Writes ncsr_keys.json (key names and shapes, in state_dict order) and reference_outputs.npz
(the reference's outputs for the weights, inputs and noise maps of tests/ncsr_recipe.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import interop_recipe  # noqa: E402
import ncsr_recipe as recipe  # noqa: E402

# The network options of code/confs/4X.yml and 8X.yml (nf 64, gc 32 in both).
FULL_CONFIGS = {
    "ncsr-4x": {"scale": 4, "L": 3, "K": 16, "S": [0, 16, 16], "n_rrdb": 23,
                "stack_blocks": [1, 8, 15, 22]},
    "ncsr-8x": {"scale": 8, "L": 4, "K": 20, "S": [0, 0, 16, 16], "n_rrdb": 23,
                "stack_blocks": [1, 8, 15, 22]},
}


def reference_options(cfg: dict) -> dict:
    """The reference's option tree of confs/4X.yml (network_G.flow) with this config's numbers."""
    return {
        "scale": cfg["scale"],
        "network_G": {"flow": {
            "K": cfg["K"], "L": cfg["L"], "S": list(cfg["S"]), "noInitialInj": True,
            "std_channels": 3, "coupling": "CondAffineSeparatedAndCond",
            "additionalFlowNoAffine": 2, "split": {"enable": True}, "fea_up0": True,
            "stackRRDB": {"blocks": list(cfg["stack_blocks"]), "concat": True},
            "CondAffineSeparatedAndCond": {"hidden_channels": cfg.get("hidden", 64)},
        }},
    }


def build_ncsr(cfg: dict):
    from models.modules.NCSRNet_arch import NCSRNet

    net = NCSRNet(3, 3, 64, cfg["n_rrdb"], 32, cfg["scale"], cfg["K"], reference_options(cfg))
    return net.eval()


def noise_of(kind: str, hr: torch.Tensor, seed: int) -> torch.Tensor:
    """The `std` argument of NCSRNet: a zero [B, 1, 1, 1] std as NCSR's test code passes, or
    the HR-size 3-channel map."""
    if kind == "zero":
        return torch.zeros(hr.shape[0], 1, 1, 1)
    return recipe.noise_map(hr, seed)


def ncsr_outputs(name: str, cfg: dict, shapes: dict, out: dict) -> None:
    net = build_ncsr(cfg)
    net.load_state_dict(interop_recipe.fill(shapes, cfg["weights_seed"]))
    interop_recipe.mark_actnorms_initialised(net)
    lr, hr = interop_recipe.inputs(cfg["scale"], cfg["lr_hw"], cfg["inputs_seed"])
    for kind in recipe.MAPS:
        std = noise_of(kind, hr, cfg["noise_seed"])
        with torch.no_grad():
            epses, nll, _ = net(gt=hr, lr=lr, reverse=False, epses=[], add_gt_noise=False,
                                std=std)
            sr, _ = net(lr=lr, z=torch.zeros(epses[-1].shape), eps_std=0, reverse=True,
                        std=std)
            rec, _ = net(lr=lr, z=None, eps_std=0, reverse=True, epses=list(epses), std=std)
            nll64 = net.double()(gt=hr.double(), lr=lr.double(), reverse=False,
                                 add_gt_noise=False, std=std.double())[1]
            net.float()
        key = f"{name}/{kind}"
        out[f"{key}/nll_bpp"] = nll.numpy()
        out[f"{key}/nll_bpp_float64"] = nll64.numpy()
        out[f"{key}/sr_t0"] = sr.numpy()
        for i, eps in enumerate(epses):
            out[f"{key}/latent{i}"] = eps.numpy()
        print(key, "nll bpp", nll.tolist(), "float64", nll64.tolist(),
              "sr_t0 range", float(sr.min()), float(sr.max()),
              "reconstruction err", float((rec - hr).abs().max()))
    with torch.no_grad():
        plain = net(gt=hr, lr=lr, reverse=False, epses=[], add_gt_noise=False, std=None)[1]
    print(name, "NLL without noise couplings (std=None)", plain.tolist())
    zero, noise = (f"{name}/{kind}" for kind in recipe.MAPS)
    print(name, "zero vs noise map: nll", np.abs(out[f"{zero}/nll_bpp"]
                                                 - out[f"{noise}/nll_bpp"]).max(),
          "sr_t0", np.abs(out[f"{zero}/sr_t0"] - out[f"{noise}/sr_t0"]).max())


def main(ncsr_code: str) -> None:
    sys.path.insert(0, ncsr_code)
    torch.manual_seed(0)
    keys, counts = {}, {}
    for name, cfg in FULL_CONFIGS.items():
        net = build_ncsr(cfg)
        keys[name] = interop_recipe.shapes_of(net)
        counts[name] = (len(keys[name]), sum(p.numel() for p in net.parameters()),
                        len(list(net.parameters())))
    for name, cfg in recipe.SMALL_CONFIGS.items():
        keys[name] = interop_recipe.shapes_of(build_ncsr(cfg))
    (HERE / "ncsr_keys.json").write_text(json.dumps(keys, separators=(",", ":")) + "\n")

    out: dict[str, np.ndarray] = {}
    for name, cfg in recipe.SMALL_CONFIGS.items():
        ncsr_outputs(name, cfg, keys[name], out)
    np.savez_compressed(HERE / "reference_outputs.npz", **out)
    for name, shapes in keys.items():
        print(name, len(shapes), "tensors", sum(int(np.prod(s)) for s in shapes.values()),
              "values")
    for name, (n_tensors, n_params, n_param_tensors) in counts.items():
        print(name, "state_dict", n_tensors, "tensors; parameters", n_params, "in",
              n_param_tensors, "tensors")


if __name__ == "__main__":
    main(sys.argv[1])
