"""SRFlow: invertibility, the NLL formula, sampling, odd sizes, shapes and parameter counts."""

import math

import pytest
import torch

from cinn_sr import PRESETS, SRFlow
from cinn_sr.blocks import ZeroConv2d
from cinn_sr.flow import latent_shapes
from cinn_sr.presets import preset


def randomize_zero_inits(model: SRFlow, std: float = 0.02, seed: int = 0) -> None:
    """Give the zero-initialised output convs (subnets, split priors) random values, so the
    couplings, injectors and priors are not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ZeroConv2d):
                for p in (m.weight, m.bias, m.logs):
                    p.copy_(torch.randn(p.shape, generator=g) * std)


def initialized_model(name: str, scale_hr: int = 32, **overrides) -> SRFlow:
    torch.manual_seed(0)
    model = SRFlow.from_preset(name, **overrides)
    randomize_zero_inits(model)
    s = model.config.scale
    model.initialize(
        torch.rand(2, 3, scale_hr // s, scale_hr // s), torch.rand(2, 3, scale_hr, scale_hr)
    )
    return model


def lr_hr_pair(scale: int, lr_h: int, lr_w: int, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(batch, 3, lr_h * scale, lr_w * scale, generator=g)
    lr = torch.nn.functional.avg_pool2d(hr, scale)
    return lr, hr


@pytest.fixture(scope="module")
def tiny4():
    return initialized_model("tiny-4x")


@pytest.fixture(scope="module")
def tiny8():
    return initialized_model("tiny-8x", scale_hr=64)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("tiny-4x", {}),
        ("tiny-8x", {}),
        ("tiny-4x", {"invconv": "full", "scale_fn": "softclamp", "split_every_level": True}),
    ],
)
def test_decode_inverts_encode(name, overrides):
    model = initialized_model(name, scale_hr=64, **overrides)
    lr, hr = lr_hr_pair(model.config.scale, 8, 8)
    with torch.no_grad():
        latents = model.encode(lr, hr)
        assert all(z.abs().max() > 1e-3 for z in latents)
        torch.testing.assert_close(model.decode(lr, latents), hr, rtol=0, atol=1e-4)


def test_div2k_4x_decode_inverts_encode_on_a_small_input():
    model = initialized_model("div2k-4x")
    lr, hr = lr_hr_pair(4, 8, 8, batch=1)
    with torch.no_grad():
        latents = model.encode(lr, hr)
        assert [tuple(z.shape[1:]) for z in latents] == [(6, 16, 16), (96, 4, 4)]
        torch.testing.assert_close(model.decode(lr, latents), hr, rtol=0, atol=1e-4)


def test_nll_is_the_change_of_variables_density_in_bits_per_dimension(tiny4):
    lr, hr = lr_hr_pair(4, 4, 6)
    with torch.no_grad():
        cond = tiny4.condition(lr)
        latents, logdet = tiny4.flow(hr, c=cond)
        nll = tiny4.nll(lr, hr)
    normal = torch.distributions.Normal(0.0, 1.0)
    log_pz = sum(normal.log_prob(z).flatten(1).sum(1) for z in latents)
    expected = -(log_pz + logdet) / (math.log(2) * 3 * 16 * 24)
    assert nll.shape == (2,)
    assert torch.isfinite(nll).all()
    torch.testing.assert_close(nll, expected)


def test_logdet_matches_the_brute_force_jacobian():
    torch.manual_seed(0)
    model = SRFlow.from_preset("tiny-4x", K=1).double()
    randomize_zero_inits(model, std=0.1)
    lr, hr = (t.double() for t in lr_hr_pair(4, 2, 2, batch=1))
    model.initialize(lr, hr)
    cond = model.condition(lr)

    def flat_latents(x):
        return torch.cat([z.flatten() for z in model.flow(x, c=cond)[0]])

    jacobian = torch.autograd.functional.jacobian(flat_latents, hr)
    jacobian = jacobian.reshape(hr.numel(), hr.numel())
    _, logdet = model.flow(hr, c=cond)
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jacobian)[1], rtol=1e-6, atol=1e-6)


def test_temperature_zero_is_deterministic_and_decodes_zero_latents(tiny4):
    lr, _ = lr_hr_pair(4, 5, 4)
    a = tiny4.sample(lr, temperature=0.0, n=3)
    b = tiny4.sample(lr, temperature=0.0, n=3, generator=torch.Generator().manual_seed(5))
    assert a.shape == (6, 3, 20, 16)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # all samples of one image are equal; image b's rows are b*n .. b*n+n-1
    for image in range(2):
        single = tiny4.sample(lr[image: image + 1], temperature=0.0)
        for row in range(image * 3, image * 3 + 3):
            torch.testing.assert_close(a[row], single[0], rtol=0, atol=1e-6)
    zeros = [torch.zeros(2, *s) for s in tiny4.latent_shapes(20, 16)]
    with torch.no_grad():
        torch.testing.assert_close(tiny4.decode(lr, zeros), a[::3], rtol=0, atol=1e-6)


def test_sampling_follows_the_generator_and_the_temperature(tiny4):
    lr, _ = lr_hr_pair(4, 4, 4, batch=1)
    a = tiny4.sample(lr, 0.8, n=2, generator=torch.Generator().manual_seed(3))
    b = tiny4.sample(lr, 0.8, n=2, generator=torch.Generator().manual_seed(3))
    c = tiny4.sample(lr, 0.8, n=2, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3
    assert (a[0] - a[1]).abs().max() > 1e-3
    # the latents drawn are N(0, t^2): encoding a sample recovers them
    g = torch.Generator().manual_seed(3)
    drawn = [torch.randn(2, *s, generator=g) * 0.8 for s in tiny4.latent_shapes(16, 16)]
    with torch.no_grad():
        recovered = tiny4.encode(lr.expand(2, -1, -1, -1), a)
    for z, z_hat in zip(drawn, recovered, strict=True):
        torch.testing.assert_close(z_hat, z, rtol=0, atol=1e-3)


@pytest.mark.parametrize("lr_size", [(7, 5), (3, 9), (1, 1)])
def test_odd_lr_sizes_are_padded_and_cropped(tiny4, tiny8, lr_size):
    for model in (tiny4, tiny8):
        s = model.config.scale
        lr, hr = lr_hr_pair(s, *lr_size)
        out = model.sample(lr, 0.7, n=2)
        assert out.shape == (4, 3, lr_size[0] * s, lr_size[1] * s)
        assert torch.isfinite(out).all()
        with torch.no_grad():
            latents = model.encode(lr, hr)
            assert [tuple(z.shape[1:]) for z in latents] == model.latent_shapes(*hr.shape[-2:])
            torch.testing.assert_close(model.decode(lr, latents), hr, rtol=0, atol=1e-4)
            assert torch.isfinite(model.nll(lr, hr)).all()


def test_encoder_runs_once_per_sample_call(tiny4):
    calls = []
    handle = tiny4.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        lr, _ = lr_hr_pair(4, 4, 4, batch=2)
        out = tiny4.sample(lr, 0.9, n=5)
    finally:
        handle.remove()
    assert out.shape[0] == 10
    assert calls == [2]


def test_precomputed_conditions_give_the_same_results(tiny4):
    lr, hr = lr_hr_pair(4, 3, 5)
    with torch.no_grad():
        cond = tiny4.condition(lr)
        torch.testing.assert_close(tiny4.nll(lr, hr, cond=cond), tiny4.nll(lr, hr))
        g = torch.Generator()
        torch.testing.assert_close(
            tiny4.sample(lr, 0.5, n=2, generator=g.manual_seed(0), cond=cond),
            tiny4.sample(lr, 0.5, n=2, generator=g.manual_seed(0)),
        )


def test_sampling_an_uninitialised_model_is_refused():
    model = SRFlow.from_preset("tiny-4x")
    assert not model.is_initialized
    with pytest.raises(RuntimeError, match="initialize"):
        model.sample(torch.rand(1, 3, 4, 4))
    model.initialize(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 16, 16))
    assert model.is_initialized


@pytest.mark.parametrize("temperature", [-0.1, math.nan, math.inf])
def test_sampling_refuses_negative_or_non_finite_temperatures(tiny4, temperature):
    with pytest.raises(ValueError, match="temperature must be"):
        tiny4.sample(torch.rand(1, 3, 4, 4), temperature=temperature)


def test_mismatched_pairs_are_rejected(tiny4):
    with pytest.raises(ValueError, match="not 4x"):
        tiny4.nll(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 15, 16))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("div2k-4x", [(6, 80, 80), (96, 20, 20)]),
        ("div2k-8x", [(6, 80, 80), (12, 40, 40), (192, 10, 10)]),
    ],
)
def test_latent_shapes_follow_the_reference_layout(name, expected):
    assert latent_shapes(PRESETS[name], 160, 160) == expected
    assert sum(math.prod(s) for s in expected) == 3 * 160 * 160


def test_split_every_level_layout():
    config = preset("tiny-8x", split_every_level=True)
    assert latent_shapes(config, 160, 160) == [
        (6, 80, 80), (12, 40, 40), (24, 20, 20), (96, 10, 10)
    ]


@pytest.mark.parametrize(
    "name, millions", [("div2k-4x", 39.27), ("div2k-8x", 50.55), ("celeba-8x", 39.75)]
)
def test_full_preset_parameter_counts(name, millions):
    model = SRFlow.from_preset(name)
    n = sum(p.numel() for p in model.parameters())
    # the reference code's (andreas128/SRFlow) counts minus its unused flowUpsamplerNet.f
    assert abs(n / 1e6 - millions) < 0.01
    steps = [k for k in model.flow_modules() if ".step" in k or ".transition" in k]
    assert len(steps) == {"div2k-4x": 54, "div2k-8x": 72, "celeba-8x": 72}[name]


def test_invconv_full_has_the_same_parameter_count():
    lu = SRFlow.from_preset("tiny-8x")
    full = SRFlow.from_preset("tiny-8x", invconv="full")
    assert sum(p.numel() for p in lu.parameters()) == sum(p.numel() for p in full.parameters())


def test_presets_validate_their_fields():
    with pytest.raises(ValueError, match="power of two"):
        preset("tiny-4x", scale=3)
    with pytest.raises(ValueError, match="stack_blocks"):
        preset("tiny-4x", stack_blocks=(5,))
    with pytest.raises(KeyError, match="unknown preset"):
        preset("div2k-3x")
    assert PRESETS["div2k-4x"].cond_channels == 320


@pytest.mark.parametrize("overrides", [{"scale": 2}, {"in_channels": 1}, {"scale": 4, "L": 4}])
def test_other_scales_depths_and_channel_counts(overrides):
    torch.manual_seed(0)
    model = SRFlow.from_preset("tiny-4x", **overrides)
    c, s = model.config.in_channels, model.config.scale
    g = torch.Generator().manual_seed(0)
    lr, hr = torch.rand(2, c, 5, 7, generator=g), torch.rand(2, c, 5 * s, 7 * s, generator=g)
    model.initialize(lr, hr)
    with torch.no_grad():
        latents = model.encode(lr, hr)
        assert sum(z[0].numel() for z in latents) == c * math.prod(model.padded_hr_size(5, 7))
        torch.testing.assert_close(model.decode(lr, latents), hr, rtol=0, atol=1e-4)
    assert model.sample(lr, 0.5, n=2).shape == (4, c, 5 * s, 7 * s)


def test_the_api_refuses_bad_tensors_with_clear_value_errors():
    torch.manual_seed(0)
    model = SRFlow.from_preset("tiny-4x")
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 32, 32)
    model.initialize(lr, hr)
    cases = [
        (lambda: model.sample(lr[0]), "LR must be N x C x H x W, got shape (3, 8, 8)"),
        (lambda: model.sample((lr * 255).to(torch.uint8)),
         "LR must be a float tensor in [0, 1], got torch.uint8"),
        (lambda: model.sample(lr * 255), "LR values must lie in [0, 1], got [2.484, 254.8]"),
        (lambda: model.sample(lr[:, :1]), "LR has 1 channels, the model takes 3"),
        (lambda: model.sample(lr[:0]), "LR is empty: shape (0, 3, 8, 8)"),
        (lambda: model.nll(lr, hr * 255), "HR values must lie in [0, 1]"),
        (lambda: model.sample(lr.numpy()), "LR must be a torch.Tensor, got ndarray"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as error:
            call()
        assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert "divide it by 255" in _error(lambda: model.sample(lr * 255))
    latents = model.encode(lr, hr)
    with pytest.raises(
        ValueError, match=r"latents for an LR of 8x8 must have the shapes N x 6 x 16 x 16"
    ):
        model.decode(lr, latents[:1])
    with pytest.raises(ValueError, match="multiple of the LR batch 2"):
        model.decode(lr, [z[:1] for z in latents])
    with pytest.raises(ValueError, match="must have the shapes"):
        model.decode(lr, [z[..., :-2] for z in latents])
    torch.testing.assert_close(model.decode(lr, latents), hr, rtol=0, atol=1e-4)


def _error(call) -> str:
    with pytest.raises(ValueError) as error:
        call()
    return str(error.value)
