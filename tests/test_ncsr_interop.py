"""Released NCSR files in cinn-sr give the NCSR reference code's results.

The expected values in tests/data/ncsr were recorded once by running the public NCSR network
code (younggeun-kim/NCSR `code/models/modules/NCSRNet_arch.py`) on CPU with
tests/data/ncsr/make_fixtures.py; see the README there. No reference code is in this
repository and nothing is downloaded: each test rebuilds the NCSR state dict from the
recorded key names and shapes and a seed (tests/interop_recipe.py), converts it, and compares
with the reference's NLL (bits per pixel = 3 x ours in bits per dimension), latents and
temperature-0 SR for the same seeded inputs, with the noise map zero (NCSR's test code) and
with a given non-zero map (tests/ncsr_recipe.py).
"""

from __future__ import annotations

import functools

import interop_recipe
import ncsr_recipe as recipe
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cinn_sr
import cli
from cinn_sr import CheckpointError, ncsr_keys
from cinn_sr.checkpoint import FORMATS
from cinn_sr.formats import canonicalise, read_weights
from cinn_sr.presets import SRFlowConfig

KEYS = recipe.keys()
REF = dict(np.load(recipe.DATA / "reference_outputs.npz"))
SMALL = list(recipe.SMALL_CONFIGS)
FULL = {"ncsr-4x": (0, 16, 16), "ncsr-8x": (0, 0, 16, 16)}
UNUSED_F = ["flowUpsamplerNet.f.0.bias", "flowUpsamplerNet.f.0.weight"]
REFERENCE_SIZES = {"ncsr-4x": (2165, 41_662_643), "ncsr-8x": (3136, 64_520_163)}
"""(tensors, values) of the reference NCSRNet of code/confs/4X.yml and 8X.yml."""


def ncsr_state(name: str) -> dict[str, torch.Tensor]:
    return interop_recipe.fill(KEYS[name], recipe.SMALL_CONFIGS[name]["weights_seed"])


def small_inputs(name: str):
    cfg = recipe.SMALL_CONFIGS[name]
    return interop_recipe.inputs(cfg["scale"], cfg["lr_hw"], cfg["inputs_seed"])


@functools.cache
def converted(name: str, invconv: str = "lu"):
    cfg = recipe.SMALL_CONFIGS[name]
    return ncsr_keys.convert_ncsr(ncsr_state(name), cfg["stack_blocks"], cfg["S"], invconv)


def conditions(model, name: str, kind: str):
    """(lr, hr, cond) of a small layout, `cond` with the zero or the non-zero noise map."""
    lr, hr = small_inputs(name)
    seed = recipe.SMALL_CONFIGS[name]["noise_seed"]
    noise = None if kind == "zero" else recipe.noise_map(hr, seed)
    with torch.no_grad():
        return lr, hr, model.condition(lr, noise=noise)


def noise_subnet_layers(shapes: dict[str, list[int]], noise_steps) -> tuple[set[int], set[int]]:
    """The layer indices of the conditional steps with and without a noise coupling, read
    from a reference key list: levels start at the squeezes (the layers without tensors), a
    level's conditional steps are its layers with affine.fAffine tensors."""
    layers = {int(k.split(".")[2]) for k in shapes if k.startswith("flowUpsamplerNet.layers.")}
    levels: list[list[int]] = []
    for index in range(max(layers) + 1):
        if index not in layers:
            levels.append([])
        elif f"flowUpsamplerNet.layers.{index}.affine.fAffine.0.weight" in shapes:
            levels[-1].append(index)
    assert len(levels) == len(noise_steps)
    with_noise = {i for steps, n in zip(levels, noise_steps, strict=True)
                  for i in steps[len(steps) - n:]}
    return with_noise, {i for steps in levels for i in steps} - with_noise


def expected_dropped(shapes: dict[str, list[int]], noise_steps) -> list[str]:
    _, without = noise_subnet_layers(shapes, noise_steps)
    noise = [k for k in shapes if ".affine.fAffine_std." in k and int(k.split(".")[2]) in without]
    return sorted(noise) + UNUSED_F


def assert_one_line(error: Exception) -> None:
    assert str(error) and "\n" not in str(error)


# ---- parity -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", recipe.MAPS)
@pytest.mark.parametrize("invconv", ["lu", "full"])
@pytest.mark.parametrize("name", SMALL)
def test_nll_equals_reference(name, invconv, kind):
    model, report = converted(name, invconv)
    lr, hr, cond = conditions(model, name, kind)
    with torch.no_grad():
        nll = model.nll(lr, hr, cond=cond)
    expected = REF[f"{name}/{kind}/nll_bpp"] / 3
    np.testing.assert_allclose(nll.numpy(), expected, rtol=1e-5, atol=0)
    assert report.dropped == expected_dropped(KEYS[name], recipe.SMALL_CONFIGS[name]["S"])
    assert model.is_initialized


@pytest.mark.parametrize("kind", recipe.MAPS)
@pytest.mark.parametrize("invconv", ["lu", "full"])
@pytest.mark.parametrize("name", SMALL)
def test_temperature_zero_sr_equals_reference(name, invconv, kind):
    model, _ = converted(name, invconv)
    lr, _, cond = conditions(model, name, kind)
    sr = model.sample(lr, 0.0, cond=cond)
    assert np.abs(sr.numpy() - REF[f"{name}/{kind}/sr_t0"]).max() <= 1e-5


@pytest.mark.parametrize("kind", recipe.MAPS)
@pytest.mark.parametrize("name", SMALL)
def test_latents_equal_reference(name, kind):
    model, _ = converted(name)
    lr, hr, cond = conditions(model, name, kind)
    with torch.no_grad():
        latents = model.encode(lr, hr, cond=cond)
    expected = [REF[f"{name}/{kind}/latent{i}"] for i in range(len(latents))]
    assert f"{name}/{kind}/latent{len(latents)}" not in REF
    assert [tuple(z.shape) for z in latents] == [e.shape for e in expected]
    for z, e in zip(latents, expected, strict=True):
        assert np.abs(z.numpy() - e).max() <= 1e-5


@pytest.mark.parametrize("name", SMALL)
def test_the_non_zero_map_moves_the_outputs_far_beyond_the_tolerances(name):
    """Otherwise the parity with the non-zero map would prove little about the map."""
    zero, noise = (f"{name}/{kind}" for kind in recipe.MAPS)
    last = max(k for k in REF if k.startswith(f"{zero}/latent"))[len(zero):]
    assert np.abs(REF[f"{zero}/sr_t0"] - REF[f"{noise}/sr_t0"]).max() > 0.1
    assert np.abs(REF[f"{zero}{last}"] - REF[f"{noise}{last}"]).max() > 1e-2  # level 1 has none
    assert np.abs(REF[f"{zero}/nll_bpp"] / REF[f"{noise}/nll_bpp"] - 1).max() > 1e-5


def test_explicit_zero_map_is_the_default():
    model, _ = converted("ncsr-small-4x")
    lr, hr = small_inputs("ncsr-small-4x")
    with torch.no_grad():
        given = model.nll(lr, hr, cond=model.condition(lr, noise=torch.zeros_like(hr)))
        default = model.nll(lr, hr, cond=model.condition(lr))
    assert torch.equal(given, default)


# ---- the released layouts ---------------------------------------------------------------


def test_full_layouts_map_every_tensor():
    """4X.pth and 8X.pth layouts convert to the presets, every tensor used but the noise
    subnets of the steps without a noise coupling and flowUpsamplerNet.f."""
    for preset, noise_steps in FULL.items():
        shapes = KEYS[preset]
        gen = torch.Generator().manual_seed(0)
        state = {k: torch.eye(s[0]) if k.endswith("invconv.weight") else
                 torch.randn(s, generator=gen) * 0.01 for k, s in shapes.items()}
        assert (len(state), sum(v.numel() for v in state.values())) == REFERENCE_SIZES[preset]
        model, report = ncsr_keys.convert_ncsr(state)
        dropped = expected_dropped(shapes, noise_steps)
        assert model.config == cinn_sr.PRESETS[preset] and model.config.name == preset
        assert model.config.noise_steps == noise_steps
        assert report.dropped == dropped
        assert report.srflow.n_tensors == len(shapes) - len(dropped)
        dropped_values = sum(state[k].numel() for k in dropped)
        n_params = sum(p.numel() for p in model.parameters())
        assert n_params == REFERENCE_SIZES[preset][1] - dropped_values
        assert n_params == sum(p.numel() for p in cinn_sr.SRFlow.from_preset(preset).parameters())
        assert model.is_initialized
        with_noise, _ = noise_subnet_layers(shapes, noise_steps)
        layers = list(model.flow_modules().values())
        for index in sorted(with_noise)[:1] + sorted(with_noise)[-1:]:
            theirs = state[f"flowUpsamplerNet.layers.{index}.affine.fAffine_std.2.weight"]
            assert torch.equal(layers[index].state_dict()["noise_coupling.subnet.2.weight"],
                               theirs)
        line = report.line()
        assert "\n" not in line and f"dropped {len(dropped)} unused" in line
        assert f"noise couplings in the last {list(noise_steps)} steps" in line


def test_released_layouts_are_detected_by_exactly_one_format(tmp_path):
    files = {
        "ncsr": ncsr_state("ncsr-small-4x"),
        "ncsr, DataParallel": {f"module.{k}": v for k, v in ncsr_state("ncsr-small-8x").items()},
    }
    for name, payload in files.items():
        torch.save(payload, tmp_path / f"{name}.pth")
    for path in sorted(tmp_path.iterdir()):
        weights = canonicalise(read_weights(path))
        assert [f.name for f in FORMATS if f.detect(weights)] == ["ncsr"], path.name
    for layout in FULL:  # the released files' keys (their tensors are too big to write here)
        weights = canonicalise(dict.fromkeys(KEYS[layout], torch.zeros(0)))
        assert [f.name for f in FORMATS if f.detect(weights)] == ["ncsr"], layout


def small_preset(name: str) -> SRFlowConfig:
    cfg = recipe.SMALL_CONFIGS[name]
    return SRFlowConfig(name=name, scale=cfg["scale"], L=cfg["L"], K=cfg["K"],
                        n_rrdb=cfg["n_rrdb"], stack_blocks=cfg["stack_blocks"],
                        hidden=cfg["hidden"], noise_steps=tuple(cfg["S"]))


def test_load_takes_the_noise_steps_from_the_preset_of_the_layout(tmp_path, monkeypatch):
    path = tmp_path / "8X_small.pth"
    torch.save(ncsr_state("ncsr-small-8x"), path)
    with pytest.raises(CheckpointError, match="stack_blocks") as info:
        cinn_sr.load(path)  # no preset has this layout
    assert_one_line(info.value)
    monkeypatch.setitem(cinn_sr.PRESETS, "ncsr-small-8x", small_preset("ncsr-small-8x"))
    model = cinn_sr.load(path)
    assert model.config.name == "ncsr-small-8x" and model.config.noise_steps == (0, 0, 1, 2)
    lr, hr, cond = conditions(model, "ncsr-small-8x", "noise")
    with torch.no_grad():
        nll = model.nll(lr, hr, cond=cond)
    np.testing.assert_allclose(nll.numpy(), REF["ncsr-small-8x/noise/nll_bpp"] / 3, rtol=1e-5)


def test_convert_cli_on_an_ncsr_file(tmp_path):
    path = tmp_path / "8X_small.pth"
    torch.save({f"module.{k}": v for k, v in ncsr_state("ncsr-small-8x").items()}, path)
    out = tmp_path / "ncsr8x.pt"
    args = ["convert", str(path), "--out", str(out), "--stack-blocks", "1,2,3,4"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 1 and "--noise-steps" in result.output and not out.exists()
    assert len(result.output.strip().splitlines()) == 1

    result = CliRunner().invoke(cli.main, [*args, "--noise-steps", "0,0,1,2"])
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("NCSR 8x")
    dropped = expected_dropped(KEYS["ncsr-small-8x"], (0, 0, 1, 2))
    assert f"dropped {len(dropped)} unused" in result.output
    checkpoint = cinn_sr.load_checkpoint(out)
    assert checkpoint["source"] == {"file": path.name, "format": "ncsr", "dropped": dropped}
    model = cinn_sr.load(out)
    lr, hr, cond = conditions(model, "ncsr-small-8x", "noise")
    sr = model.sample(lr, 0.0, cond=cond)
    assert np.abs(sr.numpy() - REF["ncsr-small-8x/noise/sr_t0"]).max() <= 1e-5

    result = CliRunner().invoke(cli.main, [*args, "--noise-steps", "a,b"])
    assert result.exit_code == 2 and "--noise-steps" in result.output


def test_encoder_of_an_ncsr_file(tmp_path):
    path = tmp_path / "4X_small.pth"
    state = ncsr_state("ncsr-small-4x")
    torch.save(state, path)
    weights = cinn_sr.interop.load_encoder_state(path)
    assert weights.source == "ncsr" and weights.fields["rrdb_skip"] == "trunk"
    expected = {k[len("RRDB."):]: v for k, v in state.items() if k.startswith("RRDB.")}
    assert weights.state_dict.keys() == expected.keys()


# ---- refusals ---------------------------------------------------------------------------

# ncsr-small-4x: steps 3, 4 (level 1) and 9 (level 2) have no noise coupling, 10, 14, 15 do.
@pytest.mark.parametrize("old, new", [
    ("flowUpsamplerNet.layers.10.affine.fAffine_std.4.logs",
     "flowUpsamplerNet.layers.10.affine.fAffine_std.4.logz"),
    ("flowUpsamplerNet.layers.3.affine.fAffine_std.0.weight",
     "flowUpsamplerNet.layers.3.affine.fAffine_std.1.weight"),
    ("flowUpsamplerNet.layers.15.affine.fAffine_std.2.actnorm.bias", None),
    ("flowUpsamplerNet.layers.4.affine.fAffine_std.2.actnorm.logs", None),
    (None, "flowUpsamplerNet.layers.1.affine.fAffine_std.0.weight"),  # on a transition step
])
def test_renamed_or_missing_noise_key_is_named_in_the_error(old, new):
    state = ncsr_state("ncsr-small-4x")
    value = state.pop(old) if old else torch.zeros(64, 9, 3, 3)
    if new:
        state[new] = value
    with pytest.raises(CheckpointError) as info:
        ncsr_keys.convert_ncsr(state, [0, 1, 2, 3], [0, 1, 2])
    assert_one_line(info.value)
    assert (old or new) in str(info.value)


def test_misshapen_noise_subnet_and_bad_noise_steps_are_one_line_errors():
    state = ncsr_state("ncsr-small-4x")
    key = "flowUpsamplerNet.layers.10.affine.fAffine_std.0.weight"
    state[key] = torch.zeros(64, 8, 3, 3)
    with pytest.raises(CheckpointError, match=r"layers\.10\.affine\.fAffine_std\.0\.weight has "
                                              r"shape") as info:
        ncsr_keys.convert_ncsr(state, [0, 1, 2, 3], [0, 1, 2])
    assert_one_line(info.value)
    with pytest.raises(CheckpointError, match="invalid") as info:
        ncsr_keys.convert_ncsr(ncsr_state("ncsr-small-4x"), [0, 1, 2, 3], [0, 3, 2])
    assert_one_line(info.value)
