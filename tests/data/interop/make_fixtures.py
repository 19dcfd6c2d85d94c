"""Regenerate the interop fixtures by running the public reference code once (not run by the tests).

    python tests/data/interop/make_fixtures.py SRFLOW_CODE ARCH_DIR

SRFLOW_CODE: the `code/` folder of andreas128/SRFlow (commit 5a007ad), with `utils/util.py`
reduced to its `opt_get` function (the original imports cv2 and torchvision, which the
network modules never use). ARCH_DIR: a folder with `esrgan_arch.py` (xinntao/ESRGAN
`RRDBNet_arch.py`, commit d274b11) and `basicsr_arch.py` (XPixelGroup/BasicSR
`basicsr/archs/rrdbnet_arch.py`, commit 323cc14, with its registry decorator removed and
`make_layer` / `pixel_unshuffle` from `arch_util.py` inlined). Runs on CPU in float32.

Writes official_keys.json (key names and shapes, in state_dict order) and
reference_outputs.npz (the reference's outputs for the weights and inputs of
tests/interop_recipe.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import interop_recipe as recipe  # noqa: E402

FULL_CONFIGS = {
    "srflow-4x": {"scale": 4, "L": 3, "K": 16, "n_rrdb": 23, "stack_blocks": [1, 8, 15, 22]},
    "srflow-8x": {"scale": 8, "L": 4, "K": 16, "n_rrdb": 23, "stack_blocks": [1, 3, 5, 7]},
    "srflow-celeba-8x": {"scale": 8, "L": 4, "K": 16, "n_rrdb": 8, "stack_blocks": [1, 3, 5, 7]},
}


def reference_options(cfg: dict) -> dict:
    """The reference's option tree of confs/SRFlow_DF2K_4X.yml with this config's numbers."""
    return {
        "scale": cfg["scale"],
        "network_G": {"flow": {
            "K": cfg["K"], "L": cfg["L"], "noInitialInj": True,
            "coupling": "CondAffineSeparatedAndCond", "additionalFlowNoAffine": 2,
            "split": {"enable": True}, "fea_up0": True,
            "stackRRDB": {"blocks": list(cfg["stack_blocks"]), "concat": True},
            "CondAffineSeparatedAndCond": {"hidden_channels": cfg.get("hidden", 64)},
        }},
    }


def build_srflow(cfg: dict):
    from models.modules.SRFlowNet_arch import SRFlowNet

    opt = reference_options(cfg)
    net = SRFlowNet(3, 3, 64, cfg["n_rrdb"], 32, cfg["scale"], cfg["K"], opt)
    return net.eval()


def srflow_outputs(name: str, cfg: dict, shapes: dict, out: dict) -> None:
    net = build_srflow(cfg)
    net.load_state_dict(recipe.fill(shapes, cfg["weights_seed"]))
    recipe.mark_actnorms_initialised(net)
    lr, hr = recipe.inputs(cfg["scale"], cfg["lr_hw"], cfg["inputs_seed"])
    with torch.no_grad():
        epses, nll, _ = net(gt=hr, lr=lr, reverse=False, epses=[], add_gt_noise=False)
        z_shape = epses[-1].shape
        sr, _ = net(lr=lr, z=torch.zeros(z_shape), eps_std=0, reverse=True)
        rec, _ = net(lr=lr, z=None, eps_std=0, reverse=True, epses=list(epses))
        nll64 = net.double()(gt=hr.double(), lr=lr.double(), reverse=False,
                             add_gt_noise=False)[1]
    out[f"{name}/nll_bpp"] = nll.numpy()
    out[f"{name}/nll_bpp_float64"] = nll64.numpy()
    out[f"{name}/sr_t0"] = sr.numpy()
    for i, eps in enumerate(epses):
        out[f"{name}/latent{i}"] = eps.numpy()
    print(name, "nll bpp", nll.tolist(), "float64", nll64.tolist(),
          "sr_t0 range", float(sr.min()), float(sr.max()),
          "reconstruction err", float((rec - hr).abs().max()))


def rrdb_features(net: torch.nn.Module, lr: torch.Tensor, trunk: str, names: dict) -> dict:
    """Run `net` on `lr`, recording its trunk block outputs and named module outputs."""
    recorded = {}
    hooks = [
        block.register_forward_hook(lambda m, i, o, k=f"block{idx}": recorded.__setitem__(k, o))
        for idx, block in enumerate(getattr(net, trunk))
    ]
    for key, module_name in names.items():
        module = getattr(net, module_name)
        hooks.append(module.register_forward_hook(
            lambda m, i, o, k=key: recorded.__setitem__(k, o.clone())))
    with torch.no_grad():
        recorded["sr"] = net(lr)
    for h in hooks:
        h.remove()
    return recorded


def esrgan_outputs(keys: dict, out: dict) -> None:
    """ESRGAN and BasicSR RRDBNets, and the SRFlow reference's RRDBNet, on the same weights.

    ESRGAN's global skip adds conv_first's output, SRFlow's adds the last trunk block's
    output (andreas128/SRFlow issue #52), so their features differ for the same weights.
    """
    import basicsr_arch
    import esrgan_arch

    cfg = recipe.SMALL_CONFIGS["small-4x"]
    esrgan_sd = recipe.fill(keys["esrgan-small"], recipe.ESRGAN_WEIGHTS_SEED)
    basicsr_sd = dict(zip(keys["basicsr-small"], (esrgan_sd[k] for k in keys["esrgan-small"]),
                          strict=True))
    lr, _ = recipe.inputs(4, recipe.ESRGAN_LR_HW, recipe.ESRGAN_INPUT_SEED, batch=1)

    esrgan = esrgan_arch.RRDBNet(3, 3, 64, cfg["n_rrdb"]).eval()
    esrgan.load_state_dict(esrgan_sd)
    basicsr = basicsr_arch.RRDBNet(3, 3, scale=4, num_block=cfg["n_rrdb"]).eval()
    basicsr.load_state_dict(basicsr_sd)
    ours = rrdb_features(esrgan, lr, "RRDB_trunk", {
        "conv_first": "conv_first", "trunk_conv": "trunk_conv", "up1": "upconv1",
        "up2": "upconv2"})
    theirs = rrdb_features(basicsr, lr, "body", {
        "conv_first": "conv_first", "trunk_conv": "conv_body", "up1": "conv_up1",
        "up2": "conv_up2"})
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "BasicSR != ESRGAN"
    for key, value in ours.items():
        if key not in ("conv_first", "trunk_conv"):
            out[f"esrgan/{key}"] = value.numpy()
    out["esrgan/lr_feature"] = (ours["conv_first"] + ours["trunk_conv"]).numpy()

    srflow_net = build_srflow(cfg)
    srflow_net.RRDB.load_state_dict(esrgan_sd)
    with torch.no_grad():
        features = srflow_net.rrdbPreprocessing(lr)
    out["srflow-rrdb/sr"] = features["out"].numpy()
    for level, name in enumerate(["fea_up2", "fea_up1", "fea_up0"], start=1):
        out[f"srflow-rrdb/condition{level}"] = features[name].numpy()
    print("esrgan sr range", float(ours["sr"].min()), float(ours["sr"].max()),
          "srflow-rrdb vs esrgan sr max diff", float((features["out"] - ours["sr"]).abs().max()))


def main(srflow_code: str, arch_dir: str) -> None:
    sys.path[:0] = [srflow_code, arch_dir]
    import basicsr_arch
    import esrgan_arch

    torch.manual_seed(0)
    keys = {name: recipe.shapes_of(build_srflow(cfg)) for name, cfg in FULL_CONFIGS.items()}
    for name, cfg in recipe.SMALL_CONFIGS.items():
        keys[name] = recipe.shapes_of(build_srflow(cfg))
    nb = recipe.SMALL_CONFIGS["small-4x"]["n_rrdb"]
    keys["esrgan-small"] = recipe.shapes_of(esrgan_arch.RRDBNet(3, 3, 64, nb))
    keys["basicsr-small"] = recipe.shapes_of(basicsr_arch.RRDBNet(3, 3, scale=4, num_block=nb))
    (HERE / "official_keys.json").write_text(json.dumps(keys, separators=(",", ":")) + "\n")

    out: dict[str, np.ndarray] = {}
    for name, cfg in recipe.SMALL_CONFIGS.items():
        srflow_outputs(name, cfg, keys[name], out)
    esrgan_outputs(keys, out)
    np.savez_compressed(HERE / "reference_outputs.npz", **out)
    for name, shapes in keys.items():
        print(name, len(shapes), "tensors", sum(int(np.prod(s)) for s in shapes.values()), "values")


if __name__ == "__main__":
    main(*sys.argv[1:3])
