"""Spatially varying temperature, uncertainty maps, and condition work kept across calls."""

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from flow_helpers import chebyshev_distance_to_box, photo_crop, random_tiny_model, receptive_radius
from PIL import Image

import cinn_sr
from cinn_sr.blocks import AffineInjector, ConditionalAffineCoupling, ConditionCache
from cinn_sr.datasets import imresize, write_image
from cinn_sr.uncertainty import colour_map, mean_and_std, uncertainty
from cli import main


@pytest.fixture(scope="module")
def model():
    return random_tiny_model()


@pytest.fixture(scope="module")
def lr():
    return imresize(photo_crop("astronaut", 0, 100, 256), 1 / 4).clamp(0, 1)  # 64 x 64


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_constant_map_gives_the_numbers_samples_exactly(model, lr):
    number = model.sample(lr, 0.8, n=2, generator=seeded())
    for shape in ((256, 256), (1, 1, 256, 256)):
        constant = model.sample(lr, torch.full(shape, 0.8), n=2, generator=seeded())
        assert torch.equal(constant, number)
    assert torch.equal(model.sample(lr, torch.zeros(256, 256)), model.sample(lr, 0.0))


def test_zero_temperature_in_a_region_is_the_mode_there(model, lr):
    box = (slice(8, 248), slice(16, 240))
    temperature = torch.full((256, 256), 1.0)
    temperature[box] = 0.0
    mode = model.sample(lr, 0.0)
    mixed = model.sample(lr, temperature, generator=seeded())
    free = model.sample(lr, 1.0, generator=seeded())
    change = (mixed - mode).abs().amax(1)[0]
    inside = torch.zeros(256, 256, dtype=torch.bool)
    inside[box] = True
    # deep inside: no latent within the decoder's reach was drawn (receptive_radius)
    margin = 2 ** model.config.L - 1 + receptive_radius(model.config)
    shrunk = (slice(box[0].start + margin, box[0].stop - margin),
              slice(box[1].start + margin, box[1].stop - margin))
    deep = chebyshev_distance_to_box(256, *shrunk) == 0
    assert deep.sum() > 1000
    assert change[deep].max() < 1e-4
    assert change[~inside].mean() > 10 * max(change[deep].mean(), 1e-6)
    assert (free - mode).abs().amax(1)[0][deep].mean() > 1e-3  # the region would change


@pytest.mark.parametrize(
    ("temperature", "message"),
    [
        (torch.full((256, 256), -0.1), ">= 0"),
        (torch.full((256, 256), math.nan), "finite"),
        (torch.full((256, 256), math.inf), "finite"),
        (torch.full((128, 256), 0.5), "one value per HR pixel"),
        (torch.full((1, 3, 256, 256), 0.5), r"\[H, W\] or \[B, 1, H, W\]"),
        (torch.full((2, 1, 256, 256), 0.5), "2 rows for an LR batch of 1"),
    ],
)
def test_invalid_temperature_maps_are_refused(model, lr, temperature, message):
    with pytest.raises(ValueError, match=message):
        model.sample(lr, temperature)


def test_uncertainty_is_zero_at_temperature_0_and_grows_with_it(model, lr):
    mean, std = uncertainty(model, lr, n=4, temperature=0.0, generator=seeded())
    assert std.shape == (1, 1, 256, 256) and mean.shape == (1, 3, 256, 256)
    assert float(std.max()) == 0.0
    spread = [float(uncertainty(model, lr, 4, t, seeded())[1].mean()) for t in (0.3, 0.6, 1.0)]
    assert 0 < spread[0] < spread[1] < spread[2], spread
    samples = torch.rand(5, 3, 8, 8, dtype=torch.float64)
    by_hand = samples.var(0).mean(0).sqrt()
    torch.testing.assert_close(mean_and_std(samples)[1][0].double(), by_hand, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        mean_and_std(samples[:1])


def test_colour_map_runs_from_dark_blue_to_yellow():
    image = colour_map(np.array([[0.0, 1.0, 2.0, 3.0]]), top=2.0)
    assert image.dtype == np.uint8 and image.shape == (1, 4, 3)
    assert [tuple(p) for p in image[0]] == [(68, 1, 84), (33, 145, 140), (253, 231, 37),
                                            (253, 231, 37)]
    assert (colour_map(np.zeros((2, 2))) == (68, 1, 84)).all()


def test_a_prepared_lr_gives_the_same_samples_and_runs_the_encoder_once(model, lr):
    calls = {"encoder": 0, "injector subnet": 0}

    def count(name):
        def hook(*_):
            calls[name] += 1
        return hook

    injector = next(m for m in model.flow.modules() if isinstance(m, AffineInjector))
    handles = [model.encoder.register_forward_hook(count("encoder")),
               injector.subnet.register_forward_hook(count("injector subnet"))]
    try:
        plain = [model.sample(lr, t, n=2, generator=seeded(1)) for t in (0.5, 0.9)]
        assert calls == {"encoder": 2, "injector subnet": 2}
        prepared = model.prepare(lr)
        again = [model.sample(lr, t, n=2, generator=seeded(1), cond=prepared) for t in (0.5, 0.9)]
        region = torch.zeros(256, 256, dtype=torch.bool)
        region[64:128, 64:128] = True
        latents = model.encode(lr, plain[0][:1].clamp(0, 1))
        edited = cinn_sr.resample_region(model, lr, latents, region, 0.9, seeded(2),
                                         cond=prepared)
    finally:
        for handle in handles:
            handle.remove()
    # + prepare and encode; the two prepared samples and the edit compute it once
    assert calls == {"encoder": 4, "injector subnet": 4}
    for a, b in zip(plain, again, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    assert edited.shape == (1, 3, 256, 256)
    for other in (lr[..., :32, :32], lr.flip(-1)):
        with pytest.raises(ValueError, match="prepared for another LR image"):
            model.sample(other, 0.5, cond=prepared)


def test_the_condition_cache_follows_the_condition_tensor():
    block = ConditionalAffineCoupling([(4, 8, 8)], dims_c=[(5, 8, 8)], hidden=16)
    with torch.no_grad():
        block.subnet[4].weight.normal_(0, 0.1)
    x, u = torch.randn(6, 4, 8, 8), torch.randn(2, 5, 8, 8)
    block(([x]), c=[u])  # initialises the ActNorms
    reference = block([x], c=[u])[0][0]
    cache = ConditionCache()
    with torch.no_grad(), cache.active(block):
        first = block([x], c=[u])[0][0]
        assert len(cache) == 1
        kept = block([x], c=[u])[0][0]
        other = torch.randn(2, 5, 8, 8)
        changed = block([x], c=[other])[0][0]
    assert block.condition_cache is None  # inactive again
    torch.testing.assert_close(first, reference, rtol=0, atol=1e-5)
    assert torch.equal(kept, first)
    torch.testing.assert_close(changed, block([x], c=[other])[0][0], rtol=0, atol=1e-5)


def test_cli_temperature_map_and_uncertainty(tmp_path):
    hr = photo_crop("coffee", 100, 200, 128)
    write_image(tmp_path / "lr.png", imresize(hr, 1 / 4).clamp(0, 1))
    grey = np.zeros((128, 128), np.uint8)
    grey[:, 64:] = 255
    Image.fromarray(grey).save(tmp_path / "map.png")
    runner = CliRunner()
    args = ["sample", "small-4x", str(tmp_path / "lr.png"), "--out", str(tmp_path / "sr"),
            "--temperature", "0.8", "--samples", "3", "--device", "cpu"]
    result = runner.invoke(main, [*args, "--temperature-map", str(tmp_path / "map.png"),
                                  "--uncertainty"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 images" in result.output and "1 uncertainty map" in result.output
    names = sorted(p.name for p in (tmp_path / "sr").iterdir())
    assert names == ["lr_tmax0.8_mean.png", "lr_tmax0.8_s0.png", "lr_tmax0.8_s1.png",
                     "lr_tmax0.8_s2.png", "lr_tmax0.8_std.npy", "lr_tmax0.8_std.png"]
    std = np.load(tmp_path / "sr" / "lr_tmax0.8_std.npy")
    assert std.shape == (128, 128) and std.dtype == np.float32
    # temperature 0 on the left half (away from the middle): the samples agree there
    assert std[:, :24].mean() < 0.2 * std[:, 104:].mean()

    small = np.zeros((64, 64), np.uint8)
    Image.fromarray(small).save(tmp_path / "small.png")
    wrong = runner.invoke(main, [*args, "--temperature-map", str(tmp_path / "small.png")])
    assert wrong.exit_code == 1 and "is 64x64, but the SR image of lr.png is 128x128" in (
        wrong.output
    )
    write_image(tmp_path / "small_lr.png", np.zeros((16, 16, 3), np.uint8))
    inputs = [str(tmp_path / "lr.png"), str(tmp_path / "small_lr.png")]
    mixed = runner.invoke(main, [*args[:2], *inputs, "--out", str(tmp_path / "mixed"),
                                 "--temperature-map", str(tmp_path / "map.png")])
    assert mixed.exit_code == 1 and "small_lr.png is 64x64" in mixed.output, mixed.output
    assert not (tmp_path / "mixed").exists()  # checked before anything was written
    alone = runner.invoke(main, [*args[:-4], "--samples", "1", "--uncertainty"])
    assert alone.exit_code == 2 and "at least 2 samples" in alone.output
