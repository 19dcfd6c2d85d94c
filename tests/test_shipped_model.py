"""The shipped `small-4x` model: loading by name, and the properties the paper claims, on
photos it never trained on (recipes/small-4x/val: chelsea, coffee, BytheWater, Path).
Editing and restoration with it are tested in test_latent.py.

Margins are set from the figures measured with benchmarks/quality.py (closing note of the
small-4x issue), about half of each measured margin, so they hold without flaking.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cinn_sr
from cinn_sr.datasets import imresize, read_image, write_image
from cinn_sr.evaluate import Scorer
from cinn_sr.metrics import lr_psnr, psnr, to_uint8
from cinn_sr.shipped import SHIPPED_MODELS, shipped_path
from cli import main

HELD_OUT = Path(__file__).parents[1] / "recipes" / "small-4x" / "val"


@pytest.fixture(scope="module")
def model():
    return cinn_sr.load("small-4x")


def held_out(name: str, size: int = 256) -> torch.Tensor:
    """A held-out crop as [1, 3, size, size] in [0, 1]."""
    image = read_image(HELD_OUT / f"{name}.png")[:size, :size]
    return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255


def lr_of(hr: torch.Tensor) -> torch.Tensor:
    """Its LR: the uint8 MATLAB-bicubic downscale, back in [0, 1]."""
    return torch.from_numpy(imresize(to_uint8(hr[0]), 1 / 4)).permute(2, 0, 1)[None].float() / 255


def test_the_shipped_model_loads_by_name(model):
    path = shipped_path("small-4x")
    assert path.stat().st_size < 10 * 2**20
    assert sorted(cinn_sr.load_checkpoint(path)) == ["config", "format", "model", "version"]
    assert model.config.name == "small-4x" and model.is_initialized and not model.training
    cinn_sr.checkpoint.check_preset(model.config, "small-4x")
    assert list(SHIPPED_MODELS) == ["small-4x"]


def test_a_path_wins_over_a_name_and_a_missing_name_lists_the_shipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cinn_sr.save_checkpoint(tmp_path / "small-4x", cinn_sr.SRFlow.from_preset("tiny-4x"))
    assert cinn_sr.load("small-4x").config.name == "tiny-4x"
    with pytest.raises(cinn_sr.CheckpointError) as error:
        cinn_sr.load("big-9x")
    assert str(error.value) == (
        "big-9x: no such checkpoint file or shipped model (shipped: small-4x)"
    )
    result = CliRunner().invoke(main, ["sample", "big-9x", str(tmp_path), "--out", "sr"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "Error: Invalid value for 'CKPT': big-9x: no such checkpoint file or shipped model "
        "(shipped: small-4x)"
    )


def test_temperature_0_beats_bicubic_and_keeps_the_lr(model):
    """Measured (benchmarks/quality.py): PSNR 28.76 against bicubic's 28.23 dB, LR-PSNR 46.4
    against 40.6 dB, mean of the eight held-out crops."""
    names = sorted(path.stem for path in HELD_OUT.glob("*.png"))
    assert len(names) == 8
    gains, lr_gains = [], []
    for name in names:
        hr = held_out(name)
        lr = lr_of(hr)
        sr, bicubic = model.sample(lr, 0).clamp(0, 1), imresize(lr, 4).clamp(0, 1)
        gains.append(psnr(sr[0], hr[0]) - psnr(bicubic[0], hr[0]))
        lr_gains.append(lr_psnr(sr[0], lr[0], 4) - lr_psnr(bicubic[0], lr[0], 4))
    assert np.mean(gains) > 0.25 and np.mean(lr_gains) > 3


def test_samples_are_finite_diverse_and_lr_consistent(model):
    hr = held_out("Path_0", 128)
    lr = lr_of(hr)
    samples = model.sample(lr, 0.9, 100, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(samples).all()
    samples = samples.clamp(0, 1)
    spread = samples.std(0).mean()  # per-pixel std across samples, measured 0.023
    assert spread > 0.012
    consistency = np.mean([lr_psnr(s, lr[0], 4) for s in samples[:10]])
    assert consistency > 43  # measured 46.1 dB; bicubic 40.8 dB
    score = Scorer(("diversity",), 4).score([to_uint8(s) for s in samples[:10]], to_uint8(hr[0]),
                                            to_uint8(lr[0]))["diversity"]
    assert score > 3.5  # NTIRE 2021 diversity over 10 samples, measured 7.0


def test_the_quick_start_runs_on_the_shipped_model(tmp_path):
    hr = held_out("Path_0", 128)
    write_image(tmp_path / "hr" / "path.png", hr[0])
    write_image(tmp_path / "lr.png", lr_of(hr)[0])
    runner = CliRunner()
    result = runner.invoke(main, ["sample", "small-4x", str(tmp_path / "lr.png"), "--out",
                                  str(tmp_path / "sr"), "--samples", "2"])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "sr").iterdir())
    assert written == ["lr_t0.7_s0.png", "lr_t0.7_s1.png"]
    result = runner.invoke(main, ["eval", "small-4x", str(tmp_path / "hr"), "--psnr", "--lr-psnr",
                                  "--temperature", "0"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("path"))
    assert float(row.split()[1]) > psnr(imresize(lr_of(hr), 4)[0].clamp(0, 1), hr[0])
