"""Released SRFlow / RRDB / ESRGAN / BasicSR files in cinn-sr give the reference code's results.

The expected values in tests/data/interop were recorded once by running the public reference
code (andreas128/SRFlow `code/`, xinntao/ESRGAN `RRDBNet_arch.py`, BasicSR `rrdbnet_arch.py`)
on CPU with tests/data/interop/make_fixtures.py; see the README there. No reference code is
in this repository and nothing is downloaded: each test rebuilds the official state dict
from the recorded key names and shapes and a seed (tests/interop_recipe.py), converts it,
and compares with the reference's NLL (bits per pixel = 3 x ours in bits per dimension),
latents, temperature-0 SR and encoder features for the same seeded inputs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import interop_recipe as recipe
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import cinn_sr
import cli
from cinn_sr import CheckpointError, interop, srflow_keys
from cinn_sr.checkpoint import FORMATS
from cinn_sr.encoder import RRDBEncoder
from cinn_sr.formats import canonicalise, read_weights
from cinn_sr.presets import SRFlowConfig

KEYS = recipe.official_keys()
REF = dict(np.load(recipe.DATA / "reference_outputs.npz"))
SMALL = list(recipe.SMALL_CONFIGS)
FULL = {"srflow-4x": "div2k-4x", "srflow-8x": "div2k-8x", "srflow-celeba-8x": "celeba-8x"}
UNUSED = ["flowUpsamplerNet.f.0.bias", "flowUpsamplerNet.f.0.weight"]


def official_state(name: str) -> dict[str, torch.Tensor]:
    return recipe.fill(KEYS[name], recipe.SMALL_CONFIGS[name]["weights_seed"])


def small_inputs(name: str):
    cfg = recipe.SMALL_CONFIGS[name]
    return recipe.inputs(cfg["scale"], cfg["lr_hw"], cfg["inputs_seed"])


@functools.cache
def converted(name: str, invconv: str = "lu"):
    cfg = recipe.SMALL_CONFIGS[name]
    return srflow_keys.convert_official(official_state(name), cfg["stack_blocks"], invconv)


def assert_one_line(error: Exception) -> None:
    assert str(error) and "\n" not in str(error)


# ---- SRFlow parity ----------------------------------------------------------------------


@pytest.mark.parametrize("invconv", ["lu", "full"])
@pytest.mark.parametrize("name", SMALL)
def test_nll_equals_reference(name, invconv):
    model, report = converted(name, invconv)
    lr, hr = small_inputs(name)
    with torch.no_grad():
        nll = model.nll(lr, hr)
    np.testing.assert_allclose(nll.numpy(), REF[f"{name}/nll_bpp"] / 3, rtol=1e-5, atol=0)
    assert report.dropped == UNUSED and model.is_initialized


@pytest.mark.parametrize("invconv", ["lu", "full"])
@pytest.mark.parametrize("name", SMALL)
def test_temperature_zero_sr_equals_reference(name, invconv):
    model, _ = converted(name, invconv)
    lr, _ = small_inputs(name)
    sr = model.sample(lr, temperature=0)
    assert np.abs(sr.numpy() - REF[f"{name}/sr_t0"]).max() <= 1e-5


@pytest.mark.parametrize("name", SMALL)
def test_latents_equal_reference_and_decode_inverts(name):
    model, _ = converted(name)
    lr, hr = small_inputs(name)
    with torch.no_grad():
        latents = model.encode(lr, hr)
        back = model.decode(lr, latents)
    expected = [REF[f"{name}/latent{i}"] for i in range(len(latents))]
    assert [tuple(z.shape) for z in latents] == [e.shape for e in expected]
    for z, e in zip(latents, expected, strict=True):
        assert np.abs(z.numpy() - e).max() <= 1e-5
    assert (back - hr).abs().max() <= 2e-5


def test_full_official_layouts_map_every_tensor():
    """The three released layouts convert to the presets, every tensor used but
    flowUpsamplerNet.f."""
    for layout, preset in FULL.items():
        shapes = KEYS[layout]
        state = {k: torch.eye(s[0]) if k.endswith("invconv.weight") else torch.zeros(s)
                 for k, s in shapes.items()}
        model, report = srflow_keys.convert_official(state)
        official_values = sum(v.numel() for v in state.values())
        unused_values = sum(state[k].numel() for k in UNUSED)
        assert model.config == cinn_sr.PRESETS[preset] and model.config.name == preset
        assert report.dropped == UNUSED and report.n_tensors == len(shapes) - 2
        assert sum(p.numel() for p in model.parameters()) == official_values - unused_values
        assert model.is_initialized


def test_load_accepts_official_file_with_module_prefix(tmp_path):
    path = tmp_path / "SRFlow_small_8X.pth"
    torch.save({f"module.{k}": v for k, v in official_state("small-8x").items()}, path)
    with pytest.raises(CheckpointError, match="stack_blocks") as info:
        cinn_sr.load(path)  # which trunk blocks are stacked is not in the weights
    assert_one_line(info.value)

    out = tmp_path / "small8x.pt"
    result = CliRunner().invoke(
        cli.main, ["convert", str(path), "--out", str(out), "--stack-blocks", "1,2,3,4"]
    )
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 1 and "dropped 2 unused" in result.output
    model = cinn_sr.load(out)
    lr, hr = small_inputs("small-8x")
    with torch.no_grad():
        nll = model.nll(lr, hr)
    np.testing.assert_allclose(nll.numpy(), REF["small-8x/nll_bpp"] / 3, rtol=1e-5, atol=0)
    assert cinn_sr.load_checkpoint(out)["source"]["file"] == path.name


# ---- encoders ---------------------------------------------------------------------------


def esrgan_state() -> dict[str, torch.Tensor]:
    return recipe.fill(KEYS["esrgan-small"], recipe.ESRGAN_WEIGHTS_SEED)


def basicsr_state() -> dict[str, torch.Tensor]:
    """The ESRGAN values under BasicSR's names (both key lists are in state_dict order)."""
    values = esrgan_state()
    return dict(zip(KEYS["basicsr-small"], (values[k] for k in KEYS["esrgan-small"]), strict=True))


def run_encoder(weights: interop.EncoderWeights):
    cfg = recipe.SMALL_CONFIGS["small-4x"]
    config = SRFlowConfig(scale=4, L=3, K=0, n_rrdb=weights.fields["n_rrdb"],
                          stack_blocks=cfg["stack_blocks"], rrdb_skip=weights.fields["rrdb_skip"])
    encoder = RRDBEncoder(config).eval()
    encoder.load_state_dict(weights.state_dict, strict=True)
    lr, _ = recipe.inputs(4, recipe.ESRGAN_LR_HW, recipe.ESRGAN_INPUT_SEED, batch=1)
    with torch.no_grad():
        return encoder(lr), encoder.sr(lr)


def esrgan_conditions() -> list[torch.Tensor]:
    """SRFlow's per-level conditions (the SRFlow paper, section 3.3) from ESRGAN's features."""
    ref = {k[len("esrgan/"):]: torch.from_numpy(v) for k, v in REF.items()
           if k.startswith("esrgan/")}
    blocks = recipe.SMALL_CONFIGS["small-4x"]["stack_blocks"]
    stack = torch.cat([ref[f"block{i}"] for i in blocks], 1)
    half = F.interpolate(ref["lr_feature"], scale_factor=0.5, mode="bilinear",
                         align_corners=False, recompute_scale_factor=True)
    bases = [F.leaky_relu(ref["up1"], 0.2), ref["lr_feature"], half]
    return [torch.cat([b, F.interpolate(stack, size=b.shape[2:])], 1) for b in bases]


def assert_features(conditions, sr, expected_conditions, expected_sr) -> None:
    for ours, theirs in zip(conditions, expected_conditions, strict=True):
        assert ours.shape == theirs.shape
        assert (ours - torch.as_tensor(theirs)).abs().max() <= 1e-6
    assert (sr - torch.as_tensor(expected_sr)).abs().max() <= 1e-6


@pytest.mark.parametrize("kind", ["esrgan", "basicsr", "basicsr-bare"])
def test_esrgan_and_basicsr_files_give_esrgan_features(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "esrgan":
        torch.save(esrgan_state(), path)
    elif kind == "basicsr":  # params_ema is what BasicSR's test options read; preferred
        noise = {k: torch.randn_like(v) for k, v in basicsr_state().items()}
        torch.save({"params": noise, "params_ema": basicsr_state()}, path)
    else:
        torch.save(basicsr_state(), path)
    weights = interop.load_encoder_state(path, arch="esrgan" if kind == "esrgan" else "auto")
    assert weights.fields["rrdb_skip"] == "input" and weights.fields["scale"] == 4
    assert_features(*run_encoder(weights), esrgan_conditions(), REF["esrgan/sr"])


def test_rrdb_file_gives_srflow_reference_features(tmp_path):
    path = tmp_path / "RRDB_small_4X.pth"
    torch.save(esrgan_state(), path)
    weights = interop.load_encoder_state(path)
    assert weights.source == "srflow-rrdb" and weights.fields["rrdb_skip"] == "trunk"
    expected = [REF[f"srflow-rrdb/condition{level}"] for level in (1, 2, 3)]
    assert_features(*run_encoder(weights), expected, REF["srflow-rrdb/sr"])


def test_encoder_from_srflow_file_and_cinn_sr_checkpoint(tmp_path):
    state = official_state("small-4x")
    srflow_file = tmp_path / "SRFlow_small_4X.pth"
    torch.save(state, srflow_file)
    from_srflow = interop.load_encoder_state(srflow_file)
    assert from_srflow.source == "srflow"
    expected = {k[len("RRDB."):]: v for k, v in state.items() if k.startswith("RRDB.")}
    assert from_srflow.state_dict.keys() == expected.keys()
    assert all(torch.equal(from_srflow.state_dict[k], v) for k, v in expected.items())

    ckpt = cinn_sr.save_checkpoint(tmp_path / "model.pt", converted("small-4x")[0])
    from_ckpt = interop.load_encoder_state(ckpt)
    assert from_ckpt.source == "cinn-sr" and from_ckpt.fields["n_rrdb"] == 4
    assert all(torch.equal(from_ckpt.state_dict[k], v) for k, v in expected.items())


# ---- the format table -------------------------------------------------------------------


def test_each_released_layout_is_detected_by_exactly_one_format(tmp_path):
    """Every loader dispatches through FORMATS, so each kind of file must match one entry."""
    files = {
        "srflow": official_state("small-4x"),
        "srflow, DataParallel": {f"module.{k}": v for k, v in official_state("small-4x").items()},
        "srflow-rrdb": esrgan_state(),
        "srflow-rrdb, Lightning": {"state_dict": esrgan_state(), "epoch": 3},
        "basicsr": basicsr_state(),
        "basicsr, params": {"params": basicsr_state(), "params_ema": basicsr_state()},
    }
    for name, payload in files.items():
        torch.save(payload, tmp_path / f"{name}.pth")
    cinn_sr.save_checkpoint(tmp_path / "cinn-sr.pth", cinn_sr.SRFlow.from_preset("tiny-4x"))
    for path in sorted(tmp_path.iterdir()):
        weights = canonicalise(read_weights(path))
        found = [f.name for f in FORMATS if f.detect(weights)]
        assert found == [path.stem.split(",")[0]], path.name
    for layout in FULL:  # the released files' keys (their tensors are too big to write here)
        weights = canonicalise(dict.fromkeys(KEYS[layout], torch.zeros(0)))
        assert [f.name for f in FORMATS if f.detect(weights)] == ["srflow"], layout


# ---- refusals ---------------------------------------------------------------------------


class Payload:
    """An object whose unpickling would run code: it creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_non_weights_pickle_is_refused_never_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"opt": Payload(marker), "RRDB.conv_first.weight": torch.zeros(1)}, path)
    for load in (cinn_sr.load, interop.load_encoder_state):
        with pytest.raises(CheckpointError, match="refused|not a readable") as info:
            load(path)
        assert_one_line(info.value)
    assert not marker.exists()


def test_truncated_file_is_one_line_error(tmp_path):
    path = tmp_path / "SRFlow_cut.pth"
    torch.save(official_state("small-4x"), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for load in (cinn_sr.load, interop.load_encoder_state):
        with pytest.raises(CheckpointError) as info:
            load(path)
        assert_one_line(info.value)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("state, message", [
    ({"fc.weight": torch.zeros(10, 5), "fc.bias": torch.zeros(10)}, "expected RRDB"),
    ("esrgan", "--encoder"),  # an encoder alone: convert needs a preset of its layout
    ({"params_ema": {"conv_first.weight": torch.zeros(1)}}, "BasicSR"),
])
def test_other_architecture_is_refused(tmp_path, state, message):
    path = tmp_path / "other.pth"
    torch.save(esrgan_state() if state == "esrgan" else state, path)
    with pytest.raises(CheckpointError, match=message) as info:
        cinn_sr.load(path)
    assert_one_line(info.value)
    result = CliRunner().invoke(cli.main, ["convert", str(path), "--out", str(tmp_path / "o.pt")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output and str(path) in result.output


def test_convert_encoder_file_into_a_preset_model(tmp_path):
    """An ESRGAN-layout encoder of the tiny-4x layout becomes a tiny-4x model with it as encoder."""
    config = cinn_sr.PRESETS["tiny-4x"]
    torch.manual_seed(3)
    state = RRDBEncoder(config).state_dict()
    path, out = tmp_path / "RRDB_tiny_4X.pth", tmp_path / "tiny.pt"
    torch.save(state, path)
    result = CliRunner().invoke(cli.main, ["convert", str(path), "--out", str(out), "--esrgan"])
    assert result.exit_code == 0, result.output
    assert "tiny-4x" in result.output and "skip input" in result.output
    checkpoint = cinn_sr.load_checkpoint(out)
    assert checkpoint["config"]["rrdb_skip"] == "input"
    assert checkpoint["source"] == {"file": path.name, "format": "esrgan"}
    weights = interop.load_encoder_state(out)
    assert all(torch.equal(weights.state_dict[k], v) for k, v in state.items())


@pytest.mark.parametrize("old, new", [
    ("flowUpsamplerNet.layers.3.affine.fAffine.4.logs",
     "flowUpsamplerNet.layers.3.affine.fAffine.4.logz"),
    ("RRDB.trunk_conv.weight", "RRDB.trunk_convs.weight"),
    ("flowUpsamplerNet.layers.5.conv.bias", "flowUpsamplerNet.layers.5.conv_bias"),
])
def test_renamed_key_is_named_in_the_error(old, new):
    state = official_state("small-4x")
    state[new] = state.pop(old)
    with pytest.raises(CheckpointError) as info:
        srflow_keys.convert_official(state, recipe.SMALL_CONFIGS["small-4x"]["stack_blocks"])
    assert_one_line(info.value)
    assert old in str(info.value) or new in str(info.value)


def test_wrong_shape_and_weights_only_payload_errors():
    state = official_state("small-4x")
    state["flowUpsamplerNet.layers.1.invconv.weight"] = torch.eye(11)
    with pytest.raises(CheckpointError, match=r"layers\.1\.invconv\.weight has shape") as info:
        srflow_keys.convert_official(state, [0, 1, 2, 3])
    assert_one_line(info.value)
    state["flowUpsamplerNet.layers.1.invconv.weight"] = torch.zeros(12, 12)
    with pytest.raises(CheckpointError, match=r"layers\.1\.invconv\.weight: .*singular"):
        srflow_keys.convert_official(state, [0, 1, 2, 3])
    with pytest.raises(CheckpointError, match="stack_blocks gives 2"):
        srflow_keys.convert_official(official_state("small-4x"), [0, 1])
    with pytest.raises(CheckpointError, match="not a named tensor"):
        srflow_keys.load_official({"RRDB.x": torch.zeros(1), "epoch": 3,
                                   "flowUpsamplerNet.layers.1.actnorm.bias": torch.zeros(1)})


def test_unsupported_encoder_variants_and_bad_options(tmp_path):
    state = basicsr_state()
    state["conv_first.weight"] = torch.zeros(64, 12, 3, 3)  # BasicSR x2: pixel-unshuffled input
    with pytest.raises(CheckpointError, match="x1/x2") as info:
        interop.encoder_weights({"params": state})
    assert_one_line(info.value)
    path = tmp_path / "SRFlow_small_4X.pth"
    torch.save(official_state("small-4x"), path)
    result = CliRunner().invoke(
        cli.main, ["convert", str(path), "--out", str(tmp_path / "o.pt"), "--stack-blocks", "a,b"]
    )
    assert result.exit_code == 2 and "--stack-blocks" in result.output


def test_text_file_and_cinn_sr_checkpoint_are_one_line_refusals(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(CheckpointError, match="not a file written by torch.save") as info:
        interop.load_encoder_state(text)
    assert_one_line(info.value)
    ckpt = cinn_sr.save_checkpoint(tmp_path / "model.pt", converted("small-4x")[0])
    for src, message in ((text, "torch.save"), (ckpt, "already a cinn-sr checkpoint")):
        out = tmp_path / "o.pt"
        result = CliRunner().invoke(cli.main, ["convert", str(src), "--out", str(out)])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output and not out.exists()
