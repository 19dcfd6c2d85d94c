"""Latent-space editing (cinn_sr.latent; SRFlow paper, section 4)."""

import math
from pathlib import Path

import pytest
import torch
from flow_helpers import (
    chebyshev_distance_to_box,
    photo_crop,
    random_tiny_model,
    receptive_radius,
)

import cinn_sr
from cinn_sr.datasets import imresize, read_image
from cinn_sr.latent import (
    content_transfer,
    mask_at_level,
    normalize_latents,
    resample_region,
    restore,
    style_transfer,
)
from cinn_sr.metrics import lr_psnr, psnr

TAU = 0.7

# One latent level per mode, shaped so that each has a few thousand collections of N entries:
# local: one collection per (image, position), N = channels; global: one per image, N = C*h*w;
# spatial: one per (image, channel), N = h*w.
LAYOUTS = {
    "local": ((4, 64, 32, 32), (1,)),
    "global": ((2000, 16, 4, 4), (1, 2, 3)),
    "spatial": ((8, 250, 16, 16), (2, 3)),
}


def _collection_stats(z: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat per-collection means and unbiased variances."""
    return z.mean(dims).flatten().double(), z.var(dims, correction=1).flatten().double()


@pytest.mark.parametrize("mode", sorted(LAYOUTS))
def test_normalize_latents_moments_follow_the_sampling_distribution(mode):
    shape, dims = LAYOUTS[mode]
    gen = torch.Generator().manual_seed(0)
    # Far from the target: shifted, scaled, and with collection-to-collection variation.
    z = 3.0 * torch.rand(shape, generator=gen) ** 2 + 5.0
    (out,) = normalize_latents([z], mode, TAU, generator=gen)

    means, variances = _collection_stats(out, dims)
    collections = means.numel()
    n = math.prod(shape[d] for d in dims)
    assert n * collections == z.numel()
    # m ~ N(0, tau^2/N): the average of C draws has std tau/sqrt(N C); their spread is tau^2/N,
    # and a sample variance of C normals has relative std sqrt(2/(C-1)). Five sigma each.
    assert abs(means.mean()) < 5 * TAU / math.sqrt(n * collections)
    assert abs(means.var() / (TAU**2 / n) - 1) < 5 * math.sqrt(2 / (collections - 1))
    # s^2 ~ Gamma((N-1)/2, 2 tau^2/(N-1)): mean tau^2, variance 2 tau^4/(N-1).
    var_of_s2 = 2 * TAU**4 / (n - 1)
    assert abs(variances.mean() - TAU**2) < 5 * math.sqrt(var_of_s2 / collections)
    assert abs(variances.var() / var_of_s2 - 1) < 5 * math.sqrt(2 / (collections - 1)) * 1.5


@pytest.mark.parametrize("mode", sorted(LAYOUTS))
def test_normalize_latents_is_an_affine_map_of_each_collection(mode):
    shape, dims = LAYOUTS[mode]
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(shape, generator=gen) * 2 + 1
    (out,) = normalize_latents([z], mode, TAU, generator=gen)

    def standardized(t):
        return (t - t.mean(dims, keepdim=True)) / t.std(dims, keepdim=True)

    torch.testing.assert_close(standardized(out), standardized(z), atol=2e-4, rtol=1e-4)


def test_normalize_latents_is_reproducible_with_a_generator_and_handles_several_levels():
    levels = [torch.randn(2, 6, 16, 16), torch.randn(2, 12, 8, 8), torch.randn(2, 48, 4, 4)]
    first = normalize_latents(levels, "local", 0.8, generator=torch.Generator().manual_seed(3))
    again = normalize_latents(levels, "local", 0.8, generator=torch.Generator().manual_seed(3))
    other = normalize_latents(levels, "local", 0.8, generator=torch.Generator().manual_seed(4))
    for a, b, c, z in zip(first, again, other, levels, strict=True):
        assert a.shape == z.shape
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)


def test_mask_at_level_marks_every_entry_that_covers_a_masked_pixel():
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[9, 21] = True  # one HR pixel
    for size in (32, 16, 8, 4):
        level = mask_at_level(mask, (size, size))
        assert level.shape == (1, 1, size, size)
        factor = 32 // size
        expected = torch.zeros(size, size, dtype=torch.bool)
        expected[9 // factor, 21 // factor] = True
        assert torch.equal(level[0, 0], expected)
    float_mask = torch.zeros(2, 1, 8, 8)
    float_mask[1, 0, :2, :2] = 0.9
    float_mask[0, 0, 4:, 4:] = 0.3  # below one half: outside
    level = mask_at_level(float_mask, (4, 4))
    assert level[1, 0].sum() == 1 and level[1, 0, 0, 0]
    assert not level[0].any()
    with pytest.raises(ValueError, match="does not map"):
        mask_at_level(mask, (5, 5))


@pytest.mark.parametrize("mode", sorted(LAYOUTS))
def test_normalize_latents_inside_a_mask_changes_only_the_masked_entries(mode):
    gen = torch.Generator().manual_seed(5)
    hr_mask = torch.zeros(64, 64, dtype=torch.bool)
    hr_mask[8:40, 16:64] = True  # HR pixels; at the 16x16 level: rows 2..9, columns 4..15
    z = torch.randn(3, 40, 16, 16, generator=gen) * 3 + 2
    (out,) = normalize_latents([z], mode, TAU, mask=hr_mask, generator=gen)

    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[2:10, 4:16] = True
    assert torch.equal(out[..., ~inside], z[..., ~inside])
    assert (out[..., inside] != z[..., inside]).all()
    # The masked entries alone form the collections: standardized within them, they are kept.
    kept, new = z[..., inside], out[..., inside]  # [B, C, N_positions]
    dims = {"global": (1, 2), "local": (1,), "spatial": (2,)}[mode]

    def standardized(t):
        return (t - t.mean(dims, keepdim=True)) / t.std(dims, keepdim=True)

    torch.testing.assert_close(standardized(new), standardized(kept), atol=2e-4, rtol=1e-4)
    # ... and they were moved to the target scale (96 positions x 40 channels, tau = 0.7).
    assert abs(new.std() - TAU) < 0.1


def test_normalize_latents_one_entry_collection_becomes_its_drawn_mean():
    z = torch.full((1, 5, 4, 4), 7.0)
    hr_mask = torch.zeros(4, 4, dtype=torch.bool)
    hr_mask[1, 2] = True
    (out,) = normalize_latents([z], "spatial", TAU, mask=hr_mask,
                               generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()
    assert (out[0, :, 1, 2] != 7.0).all() and (out[0, :, 1, 2].abs() < 5 * TAU).all()
    out[0, :, 1, 2] = 7.0
    assert torch.equal(out, z)


def test_normalize_latents_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        normalize_latents([torch.randn(1, 2, 2, 2)], "channel", 1.0)


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -0.5])
def test_edits_reject_a_non_finite_or_negative_temperature(random_model, temperature):
    z = [torch.randn(1, 6, 4, 4)]
    with pytest.raises(ValueError, match="temperature"):
        normalize_latents(z, "global", temperature)
    lr = torch.rand(1, 3, 8, 8)
    latents = random_model.encode(lr, torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="temperature"):
        resample_region(
            random_model, lr, latents, torch.ones(32, 32, dtype=torch.bool), temperature
        )


# ---- model-based edits on a tiny SRFlow with random weights ------------------------------


@pytest.fixture(scope="module")
def random_model():
    return random_tiny_model()


def test_encode_decode_round_trip_of_a_real_photo(random_model):
    hr = photo_crop("coffee", 100, 200, 64)
    lr = imresize(hr, 1 / 4)
    with torch.no_grad():
        back = random_model.decode(lr, random_model.encode(lr, hr))
    torch.testing.assert_close(back, hr, atol=1e-4, rtol=0)


def test_resample_region_changes_the_region_and_nothing_beyond_the_receptive_field(random_model):
    config = random_model.config
    hr = photo_crop("astronaut", 0, 100, 192)
    lr = imresize(hr, 1 / 4)
    box = (slice(13, 37), slice(21, 45))  # not aligned to the coarsest level's 8-pixel blocks
    mask = torch.zeros(192, 192, dtype=torch.bool)
    mask[box] = True
    with torch.no_grad():
        latents = random_model.encode(lr, hr)
        kept = random_model.decode(lr, latents)
    edited = resample_region(random_model, lr, latents, mask, 0.9,
                             generator=torch.Generator().manual_seed(0))
    change = (edited - kept).abs().amax(1)[0]  # [H, W], max over colours

    assert (change[mask] > 1e-3).float().mean() > 0.9
    # Safe distance: the mask covers whole 2^L blocks at the coarsest level (up to 2^L - 1
    # pixels more), then decoding reaches receptive_radius further (65 px for tiny-4x).
    safe = 2**config.L - 1 + receptive_radius(config)
    distance = chebyshev_distance_to_box(192, *box)
    far = distance > safe
    assert far.sum() > 0.5 * far.numel()
    assert change[far].max() < 1e-4
    # The bound is not vacuous: the edit does spread beyond the mask itself.
    assert change[(distance > 8) & ~far].max() > 1e-3


def test_style_transfer_onto_its_own_lr_returns_the_source(random_model):
    hr = photo_crop("rocket", 200, 300, 64)
    lr = imresize(hr, 1 / 4)
    torch.testing.assert_close(style_transfer(random_model, hr, lr, lr), hr, atol=1e-4, rtol=0)
    other_lr = imresize(photo_crop("coffee", 0, 0, 64), 1 / 4)
    assert (style_transfer(random_model, hr, lr, other_lr) - hr).abs().mean() > 1e-2
    with pytest.raises(ValueError, match="LR"):
        style_transfer(random_model, hr, lr, lr[..., :8])


def test_edits_reject_sizes_that_do_not_fit_the_scale(random_model):
    hr = photo_crop("coffee", 0, 0, 64)
    lr = imresize(hr, 1 / 4)
    with pytest.raises(ValueError, match="60x64 does not fit the 16x16 LR at 4x"):
        restore(random_model, hr[..., :60, :], lr=lr)
    with pytest.raises(ValueError, match="does not fit"):
        resample_region(random_model, lr, random_model.encode(lr, hr),
                        torch.zeros(32, 32, dtype=torch.bool), 0.9)


def test_edits_work_on_sizes_the_model_pads(random_model):
    """LR 13 x 10 is not a multiple of what the flow needs: the model pads, masks follow."""
    hr = photo_crop("chelsea", 0, 0, 52)[..., :40]
    lr = imresize(hr, 1 / 4)
    mask = torch.zeros(52, 40, dtype=torch.bool)
    mask[30:, 20:] = True
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = random_model.encode(lr, hr)
    edited = resample_region(random_model, lr, latents, mask, 0.9, generator=gen)
    pasted = content_transfer(random_model, lr, hr, hr.flip(-1), mask, 0.8, generator=gen)
    restored = restore(random_model, hr, temperature=0.5, mode="global", generator=gen)
    for out in (edited, pasted, restored):
        assert out.shape == hr.shape and torch.isfinite(out).all()


# ---- edits with a tiny SRFlow trained briefly on the sample photos -------------------------


@pytest.fixture(scope="module")
def trained_model():
    """The shipped small-4x model (cinn_sr/models/small-4x.md)."""
    return cinn_sr.load("small-4x")


def _held_out_crops() -> torch.Tensor:
    """Two 128 x 128 crops of photos small-4x never trained on (chelsea and Path, from
    recipes/small-4x/val)."""
    folder = Path(__file__).parents[1] / "recipes" / "small-4x" / "val"
    crops = [read_image(folder / name)[64:192, 64:192] for name in ("chelsea_0.png", "Path_0.png")]
    return torch.stack([torch.from_numpy(c.copy()).permute(2, 0, 1) for c in crops]).float() / 255


def test_restore_denoises_a_real_photo(trained_model):
    """Gaussian noise of sigma 0.15 (38/255), clipped to [0, 1]; global normalisation at 0.3.

    Measured with the shipped model: 16.8 -> 26.1 dB and 17.8 -> 23.0 dB on these crops.
    """
    clean = _held_out_crops()
    noise = 0.15 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    noisy = (clean + noise).clamp(0, 1)
    restored = restore(trained_model, noisy, temperature=0.3, mode="global",
                       generator=torch.Generator().manual_seed(2))
    for image in range(2):
        before = psnr(noisy[image], clean[image])
        after = psnr(restored[image], clean[image])
        assert after > before + 2.5, (image, before, after)


def test_content_transfer_makes_the_pasted_region_consistent_with_the_lr(trained_model):
    image = _held_out_crops()[:1]
    pasted = photo_crop("coffee", 100, 200, 128)
    lr = imresize(image, 1 / 4)
    mask = torch.zeros(128, 128, dtype=torch.bool)
    mask[40:88, 40:88] = True
    composite = torch.where(mask, pasted, image)
    result = content_transfer(trained_model, lr, image, pasted, mask, 0.6,
                              generator=torch.Generator().manual_seed(0))
    naive = lr_psnr(composite[0], lr[0], 4)  # 19.0 dB; the result: 49.3 dB
    assert lr_psnr(result[0], lr[0], 4) > naive + 15


def test_style_transfer_follows_the_target_lr(trained_model):
    source, target = _held_out_crops().split(1)
    source_lr, target_lr = imresize(source, 1 / 4), imresize(target, 1 / 4)
    result = style_transfer(trained_model, source, source_lr, target_lr)
    # The source against the target's LR: 10.0 dB; the result: 44.0 dB.
    assert lr_psnr(result[0], target_lr[0], 4) > lr_psnr(source[0], target_lr[0], 4) + 15
