"""The fast-path options give the same outputs as the plain model (no timing here).

A very small SRFlow (1 flow step per level, 1 RRDB block) keeps torch.compile's tracing
short; the "eager" backend checks that Dynamo captures the flow as one graph in both
directions (fullgraph=True) without paying for C++ code generation.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from cinn_sr import SRFlow
from cinn_sr.fastpath import compile_flow, fast_encoder, is_flow_compiled


def _pair(seed: int = 0):
    """(initialised model, an independent copy with the same weights, lr, hr)."""
    torch.manual_seed(seed)
    model = SRFlow.from_preset("tiny-4x", K=1, n_rrdb=1, stack_blocks=(0,))
    lr = torch.rand(2, 3, 8, 8)
    hr = F.interpolate(lr, scale_factor=4, mode="bilinear") + 0.05 * torch.rand(2, 3, 32, 32)
    model.initialize(lr, hr)
    copy = SRFlow(model.config)
    copy.load_state_dict(model.state_dict())
    return model.eval(), copy.eval(), lr, hr


def _samples(model, lr, n):
    return model.sample(lr, 0.9, n=n, generator=torch.Generator().manual_seed(3))


@pytest.mark.filterwarnings("error:torch.compile of the flow failed")
def test_compiled_flow_matches_eager_in_both_directions_and_gradients():
    plain, fast, lr, hr = _pair()
    assert compile_flow(fast, backend="eager", fullgraph=True)
    assert is_flow_compiled(fast) and not is_flow_compiled(plain)
    nll_plain, nll_fast = plain.nll(lr, hr), fast.nll(lr, hr)
    torch.testing.assert_close(nll_fast, nll_plain, rtol=0, atol=1e-6)
    nll_plain.sum().backward()
    nll_fast.sum().backward()
    grads = dict(fast.named_parameters())
    for name, p in plain.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(_samples(fast, lr, 3), _samples(plain, lr, 3), rtol=0, atol=1e-6)
    assert set(fast.state_dict()) == set(plain.state_dict())


def test_compile_failure_warns_and_falls_back_to_eager():
    plain, fast, lr, hr = _pair(1)

    def failing_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler on this machine")

    assert compile_flow(fast, backend=failing_backend)
    with pytest.warns(RuntimeWarning, match="torch.compile of the flow failed"):
        out = fast.nll(lr, hr)
    torch.testing.assert_close(out, plain.nll(lr, hr), rtol=0, atol=0)
    assert not is_flow_compiled(fast)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(_samples(fast, lr, 2), _samples(plain, lr, 2), rtol=0, atol=0)


def test_compile_refuses_an_uninitialised_model():
    model = SRFlow.from_preset("tiny-4x", K=1, n_rrdb=1, stack_blocks=(0,))
    with pytest.raises(RuntimeError, match="initialise"):
        compile_flow(model)


def test_channels_last_encoder_gives_the_same_conditions():
    plain, fast, lr, _ = _pair(2)
    fast_encoder(fast, channels_last=True, bf16=False)
    for a, b in zip(plain.condition(lr), fast.condition(lr), strict=True):
        assert b.dtype == torch.float32 and b.is_contiguous()
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_samples(fast, lr, 2), _samples(plain, lr, 2), rtol=1e-4,
                               atol=1e-4)
    assert set(fast.state_dict()) == set(plain.state_dict())


def test_bf16_encoder_returns_float32_conditions_close_to_float32():
    plain, fast, lr, _ = _pair(3)
    fast_encoder(fast, channels_last=True, bf16=True)
    with torch.no_grad():
        pairs = list(zip(plain.condition(lr), fast.condition(lr), strict=True))
    for a, b in pairs:
        assert b.dtype == torch.float32 and b.is_contiguous()
        assert float((a - b).abs().max()) <= 0.05 * float(a.abs().max()) + 1e-3


def test_fast_encoder_without_options_leaves_the_conditions_alone():
    plain, fast, lr, _ = _pair(4)
    fast_encoder(fast, channels_last=False, bf16=False)
    assert not is_flow_compiled(fast)
    for a, b in zip(plain.condition(lr), fast.condition(lr), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_folded_subnet_layers_equal_conv_then_actnorm_and_scale():
    from cinn_sr.blocks.subnet import ConvActNorm, ZeroConv2d

    torch.manual_seed(5)
    x = torch.randn(3, 5, 9, 9, requires_grad=True)
    conv = ConvActNorm(5, 8, kernel_size=3)
    conv(x)  # initialises the ActNorm from data
    with torch.no_grad():
        conv.actnorm.logs.add_(0.3 * torch.randn_like(conv.actnorm.logs))
        conv.actnorm.bias.add_(0.3 * torch.randn_like(conv.actnorm.bias))
    folded = conv(x)
    unfolded = conv.actnorm(conv.linear_part(x), allow_init=False)
    torch.testing.assert_close(folded, unfolded, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(folded.square().sum(), [x, conv.weight, conv.actnorm.logs])
    expected = torch.autograd.grad(unfolded.square().sum(), [x, conv.weight, conv.actnorm.logs])
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

    zero = ZeroConv2d(5, 6)
    with torch.no_grad():
        for p in (zero.weight, zero.bias, zero.logs):
            p.normal_(0, 0.2)
    plain = F.conv2d(x, zero.weight, zero.bias, padding=1) * torch.exp(3 * zero.logs)
    torch.testing.assert_close(zero(x), plain, rtol=1e-5, atol=1e-5)


def test_folded_coupling_broadcast_equals_repeated_condition():
    from cinn_sr.blocks import ConditionalAffineCoupling

    torch.manual_seed(6)
    block = ConditionalAffineCoupling([(6, 8, 8)], [(4, 8, 8)], hidden=16)
    x, u = torch.randn(6, 6, 8, 8), torch.randn(2, 4, 8, 8)
    block((x,), c=[u.repeat_interleave(3, 0)])  # initialises the inner ActNorms
    with torch.no_grad():
        for name, p in block.named_parameters():
            if "actnorm" in name or name.startswith("subnet.4"):
                p.add_(0.2 * torch.randn_like(p))
    (z_broadcast,), logdet_broadcast = block((x,), c=[u])
    (z_repeated,), logdet_repeated = block((x,), c=[u.repeat_interleave(3, 0)])
    torch.testing.assert_close(z_broadcast, z_repeated, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logdet_broadcast, logdet_repeated, rtol=1e-5, atol=1e-5)
    (x_back,), _ = block((z_broadcast,), c=[u], rev=True)
    torch.testing.assert_close(x_back, x, rtol=1e-4, atol=1e-4)
