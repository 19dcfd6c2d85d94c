"""NCSR built from the same blocks: its presets' layout, the noise-map conditions, its
training noise, and a tiny NCSR that trains through `cinn_sr.driver.train`."""

import pytest
import torch
import torch.nn.functional as F
from flow_helpers import photo_crop, randomise_output_layers

import cinn_sr
from cinn_sr import SRFlow
from cinn_sr.config import TrainConfig, resolve
from cinn_sr.datasets import OptionError, imresize
from cinn_sr.driver import train
from cinn_sr.presets import preset
from cinn_sr.runs import read_metrics
from cinn_sr.train import add_ncsr_noise

TINY_NCSR = {"noise_steps": (0, 1, 2)}


def noise_couplings(model: SRFlow) -> dict[str, bool]:
    return {name: hasattr(module, "noise_coupling")
            for name, module in model.flow_modules().items() if ".step" in name}


@pytest.mark.parametrize("name, first_noisy",
                         [("ncsr-4x", [16, 0, 0]), ("ncsr-8x", [20, 20, 4, 4])])
def test_ncsr_presets_put_noise_couplings_in_the_last_steps_of_each_level(name, first_noisy):
    config = preset(name)
    model = SRFlow(config)
    has = noise_couplings(model)
    for level, first in enumerate(first_noisy, start=1):
        steps = [has[f"L{level}.step{k}"] for k in range(config.K)]
        assert steps == [k >= first for k in range(config.K)]
    step = model.flow_modules()[f"L{config.L}.step{config.K - 1}"]
    assert [n for n, _ in step.named_children()] == [
        "actnorm", "invconv", "injector", "noise_coupling", "coupling"]
    assert step.noise_coupling.subnet[0].in_channels == step.coupling.passive_channels + 3


@pytest.fixture(scope="module")
def tiny_ncsr():
    torch.manual_seed(0)
    model = SRFlow.from_preset("tiny-4x", **TINY_NCSR)
    hr = photo_crop("chelsea", 40, 100, 32)
    model.initialize(imresize(hr, 1 / 4), hr)
    randomise_output_layers(model)
    return model.eval(), imresize(hr, 1 / 4), hr


def test_conditions_end_with_one_noise_map_per_noise_level(tiny_ncsr):
    model, lr, hr = tiny_ncsr
    features = model.condition(lr)
    assert len(features) == 3 + 2  # L levels, then the noise maps of levels 2 and 3
    assert [tuple(c.shape) for c in features[3:]] == [(1, 3, 8, 8), (1, 3, 4, 4)]
    assert all(not c.any() for c in features[3:])
    noise = torch.randn_like(hr) * 0.05
    maps = model.condition(lr, noise=noise)[3:]
    for level, got in zip((2, 3), maps, strict=True):
        size = (hr.shape[-2] >> level, hr.shape[-1] >> level)
        expected = F.interpolate(noise, size=size, mode="bicubic", align_corners=False)
        torch.testing.assert_close(got, expected)


def test_the_noise_map_conditions_the_density_and_the_flow_stays_invertible(tiny_ncsr):
    model, lr, hr = tiny_ncsr
    noise = torch.randn_like(hr) * 0.5
    with torch.no_grad():
        zero, noisy = model.nll(lr, hr), model.nll(lr, hr, cond=model.condition(lr, noise=noise))
        assert float(zero) != float(noisy)
        z_zero = model.encode(lr, hr)[-1]
        z_noisy = model.encode(lr, hr, cond=model.condition(lr, noise=noise))[-1]
        assert (z_zero - z_noisy).abs().max() > 1e-2
        for cond in (model.condition(lr), model.condition(lr, noise=noise)):
            latents = model.encode(lr, hr, cond=cond)
            back = model.decode(lr, latents, cond=cond)
            assert (back - hr).abs().max() < 1e-4


def test_bad_noise_maps_are_one_line_errors(tiny_ncsr):
    model, lr, hr = tiny_ncsr
    with pytest.raises(ValueError, match=r"noise map must be 1 x 3 x 32 x 32"):
        model.condition(lr, noise=torch.zeros(1, 3, 8, 8))
    srflow = SRFlow.from_preset("tiny-4x")
    with pytest.raises(ValueError, match="model without noise couplings"):
        srflow.condition(lr, noise=torch.zeros_like(hr))
    with pytest.raises(ValueError, match="noise_steps must give one count in 0..K=2"):
        preset("tiny-4x", noise_steps=(0, 3, 1))


def test_training_noise_has_one_std_per_image_and_reaches_the_lr():
    torch.manual_seed(0)
    hr = torch.full((64, 3, 32, 32), 0.5)
    lr = imresize(hr, 1 / 4)
    noisy_hr, noisy_lr, eps = add_ncsr_noise(hr, lr, 0.05, 4)
    torch.testing.assert_close(noisy_hr, hr + eps)
    torch.testing.assert_close(noisy_lr, lr + imresize(eps, 1 / 4))
    stds = eps.flatten(1).std(dim=1)
    assert float(stds.max()) < 0.055 and float(stds.min()) < 0.01
    assert 0.02 < float(stds.mean()) < 0.03  # uniform in [0, 0.05]


def test_ncsr_presets_train_with_noise_and_srflow_refuses_it(tmp_path):
    assert resolve(TrainConfig, cli={"preset": "ncsr-4x"}).noise_max_std == 0.05
    assert resolve(TrainConfig, cli={"preset": "ncsr-8x"}).noise_max_std == 0.03
    assert resolve(TrainConfig, cli={"preset": "div2k-4x"}).noise_max_std == 0.0
    config = resolve(TrainConfig, cli={"preset": "tiny-4x", "noise_max_std": 0.05,
                                       "out": str(tmp_path / "run"), "iterations": 1})
    with pytest.raises(OptionError, match="needs a model with noise couplings"):
        train(config)


def test_a_tiny_ncsr_trains(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CINN_SR_CACHE", str(cache))
    torch.set_num_threads(1)
    config = resolve(TrainConfig, cli={
        "preset": "tiny-4x", "model": TINY_NCSR, "noise_max_std": 0.05, "iterations": 60,
        "batch_size": 4, "val_count": 2, "val_every": 60, "checkpoint_every": 60,
        "device": "cpu", "workers": 0, "out": str(tmp_path / "run"),
    })
    result = train(config)
    loss = [r["loss"] for r in read_metrics(result.out / "metrics.jsonl") if "loss" in r]
    assert len(loss) == 60 and sum(loss[-10:]) / 10 < sum(loss[:10]) / 10 - 0.3
    model = cinn_sr.load(result.out / "last.pt")
    assert model.config.noise_steps == TINY_NCSR["noise_steps"]
    assert noise_couplings(model)["L3.step1"] and not noise_couplings(model)["L2.step0"]
