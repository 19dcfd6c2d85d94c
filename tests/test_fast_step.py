"""The training step's exact saving equals the plain path: the condition convolutions over
nearest-upsampled channels at the low resolution (`blocks/upsampled.py`, the blocks'
`upsampled` option, set by `cinn_sr.flow`), with the encoder trained or frozen, in both
directions, with the ActNorm init and with condition broadcasting."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from cinn_sr import SRFlow
from cinn_sr.blocks import NCSR_STEP, AffineInjector, ConditionalAffineCoupling, FlowStep, upsampled
from cinn_sr.blocks.upsampled import conv_over_upsampled, nearest_source
from cinn_sr.flow import upsampled_channels
from cinn_sr.presets import preset

F64 = torch.float64


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_conv_over_upsampled_equals_the_conv_of_the_upsampled_map(factor, kernel):
    torch.manual_seed(factor * 10 + kernel)
    low = torch.randn(2, 5, 6, 7, dtype=F64, requires_grad=True)
    weight = torch.randn(4, 5, kernel, kernel, dtype=F64, requires_grad=True)
    bias = torch.randn(4, dtype=F64, requires_grad=True)
    grad_out = torch.randn(2, 4, 6 * factor, 7 * factor, dtype=F64)
    results = []
    for fast in (True, False):
        if fast:
            out = conv_over_upsampled(low, weight, bias, factor, kernel // 2)
        else:
            up = F.interpolate(low, scale_factor=factor, mode="nearest")
            out = F.conv2d(up, weight, bias, padding=kernel // 2)
        grads = torch.autograd.grad(out, (low, weight, bias), grad_out)
        results.append((out, *grads))
    for fast, plain in zip(*results, strict=True):
        assert relative_error(fast, plain) < 1e-12


def test_nearest_source_finds_the_low_resolution_map_or_none():
    low = torch.randn(2, 3, 4, 5)
    up = F.interpolate(low, scale_factor=2, mode="nearest")
    assert torch.equal(nearest_source(up, 2), low)
    assert torch.equal(nearest_source(F.interpolate(low, scale_factor=4), 4), low)
    assert nearest_source(up, 4) is None  # 8 x 10 is not a multiple of 4 in width
    bumped = up.clone()
    bumped[1, 2, 7, 9] += 1e-6
    assert nearest_source(bumped, 2) is None


def upsampled_condition(batch: int = 2) -> torch.Tensor:
    """[batch, 2 + 4, 8, 8]: two plain channels, then four nearest-upsampled by 2."""
    return torch.cat([torch.randn(batch, 2, 8, 8, dtype=F64),
                      F.interpolate(torch.randn(batch, 4, 4, 4, dtype=F64), scale_factor=2)], 1)


@pytest.mark.parametrize("cls", [AffineInjector, ConditionalAffineCoupling])
def test_affine_blocks_compute_upsampled_channels_at_low_resolution(cls):
    torch.manual_seed(3)
    block = cls([(4, 8, 8)], [(6, 8, 8)], hidden=8, upsampled=(2, 2)).double()
    plain = copy.deepcopy(block)
    plain.upsampled = None
    x, first = torch.randn(6, 4, 8, 8, dtype=F64), upsampled_condition(3)
    block((x,), c=[first])  # the subnets' ActNorm init (2 samples per condition)
    plain((x,), c=[first])
    for name, param in block.named_parameters():
        torch.testing.assert_close(param, dict(plain.named_parameters())[name])
    with torch.no_grad():
        for a, b in zip(block.parameters(), plain.parameters(), strict=True):
            a.add_(0.1 * torch.randn_like(a))
            b.copy_(a)
    spy = mock.patch.object(block.subnet, "first_layer_upsampled",
                            wraps=block.subnet.first_layer_upsampled)
    with spy as calls:
        check_against_plain(block, plain, x)
    assert calls.call_count == 2  # forward and reverse of the upsampled condition only


def check_against_plain(block, plain, x):
    """Outputs, log-dets, gradients and the inverse of `block` equal `plain`'s."""
    for u in (upsampled_condition(), torch.randn(2, 6, 8, 8, dtype=F64)):  # 3 samples each
        u_fast, u_plain = u.clone().requires_grad_(), u.clone().requires_grad_()
        (out, ), logdet = block((x,), c=[u_fast])
        (ref, ), ref_logdet = plain((x,), c=[u_plain])
        assert relative_error(out, ref) < 1e-12 and relative_error(logdet, ref_logdet) < 1e-12
        (out * ref.detach()).sum().add(logdet.sum()).backward()
        (ref * ref.detach()).sum().add(ref_logdet.sum()).backward()
        for a, b in zip(block.parameters(), plain.parameters(), strict=True):
            assert relative_error(a.grad, b.grad) < 1e-10
            a.grad, b.grad = None, None
        # the upsampled channels' gradient: equal block sums (what nearest_2 passes back)
        assert relative_error(u_fast.grad[:, :2], u_plain.grad[:, :2]) < 1e-10
        pooled = [F.avg_pool2d(g[:, 2:], 2) for g in (u_fast.grad, u_plain.grad)]
        assert relative_error(*pooled) < 1e-10
        back, _ = block((out.detach(),), c=[u], rev=True)
        assert relative_error(back[0], x) < 1e-10


def test_upsampled_option_is_checked_and_reaches_the_feature_blocks_only():
    with pytest.raises(ValueError, match="upsampled must be"):
        AffineInjector([(4, 8, 8)], [(6, 8, 8)], upsampled=(6, 2))
    with pytest.raises(ValueError, match="upsampled must be"):
        ConditionalAffineCoupling([(4, 8, 8)], [(6, 8, 8)], upsampled=(2, 1))
    step = FlowStep([(4, 8, 8)], [(6, 8, 8), (3, 8, 8)], parts=NCSR_STEP, upsampled=(2, 2))
    assert step.injector.upsampled == step.coupling.upsampled == (2, 2)
    assert step.noise_coupling.upsampled is None


def test_flow_marks_the_levels_with_upsampled_stacked_features():
    config = preset("div2k-4x")
    assert [upsampled_channels(config, level) for level in (1, 2, 3)] == [(64, 2), None, None]
    config8 = preset("tiny-8x")
    assert [upsampled_channels(config8, level) for level in (1, 2, 3, 4)] == [
        (config8.nf, 4), (config8.nf, 2), None, None]


def use_plain_path(model: SRFlow) -> SRFlow:
    for block in model.flow.modules():
        if hasattr(block, "upsampled"):
            block.upsampled = None
    return model


def loss_and_gradients(model: SRFlow, lr: torch.Tensor, hr: torch.Tensor):
    lr = lr.clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    loss = model.nll(lr, hr).sum()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, lr.grad


def perturbed_models(name: str, lr_size: int, dtype, tol: float = 1e-10, only: str = ""):
    """(fast, plain, lr, hr): the same initialised weights, those whose names contain `only`
    perturbed; `plain` with the `upsampled` option off."""
    torch.manual_seed(0)
    fast = SRFlow.from_preset(name).to(dtype)
    scale = fast.config.scale
    hr = torch.rand(2, 3, lr_size * scale, lr_size * scale, dtype=dtype)
    lr = F.avg_pool2d(hr, scale)
    plain = use_plain_path(copy.deepcopy(fast))
    fast.initialize(lr, hr)
    plain.initialize(lr, hr)
    for (name_a, a), b in zip(fast.state_dict().items(), plain.state_dict().values(),
                              strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=name_a)
    with torch.no_grad():
        for (name_a, a), b in zip(fast.named_parameters(), plain.parameters(), strict=True):
            if only in name_a:
                a.add_(0.02 * torch.randn_like(a))
                b.copy_(a)
    return fast, plain, lr, hr


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
@pytest.mark.parametrize(("name", "lr_size", "dtype", "tol"), [
    ("tiny-4x", 8, torch.float64, 1e-10),
    ("tiny-8x", 8, torch.float64, 1e-10),
    ("tiny-4x", 8, torch.float32, 1e-5),
    ("div2k-4x", 4, torch.float64, 1e-10),
])
def test_training_step_loss_and_gradients_equal_the_plain_path(name, lr_size, dtype, tol):
    fast, plain, lr, hr = perturbed_models(name, lr_size, dtype, tol)
    loss, grads, lr_grad = loss_and_gradients(fast, lr, hr)
    ref_loss, ref_grads, ref_lr_grad = loss_and_gradients(plain, lr, hr)
    assert relative_error(loss, ref_loss) < tol
    assert grads.keys() == ref_grads.keys()
    assert {n for n, _ in fast.flow.named_parameters(prefix="flow")} <= grads.keys()
    worst = max(relative_error(grads[n], ref_grads[n]) for n in grads if ref_grads[n].any())
    assert worst < tol
    assert relative_error(lr_grad, ref_lr_grad) < tol


def test_frozen_encoder_step_equals_the_plain_path_for_the_flow():
    fast, plain, lr, hr = perturbed_models("tiny-4x", 8, torch.float64)
    fast.encoder.requires_grad_(False)
    loss, grads, _ = loss_and_gradients(fast, lr, hr)
    ref_loss, ref_grads, _ = loss_and_gradients(plain, lr, hr)
    assert relative_error(loss, ref_loss) < 1e-12
    assert grads.keys() == {n for n in ref_grads if n.startswith("flow.")}
    assert max(relative_error(grads[n], ref_grads[n]) for n in grads) < 1e-10


def test_sampling_with_broadcast_conditions_equals_the_plain_path():
    fast, plain, lr, _ = perturbed_models("tiny-8x", 8, torch.float64, only="subnet")
    torch.manual_seed(5)
    latents = [torch.randn(6, *shape, dtype=torch.float64)
               for shape in fast.latent_shapes(64, 64)]  # 3 samples per LR image
    out = fast.decode(lr, latents)
    assert relative_error(out, plain.decode(lr, latents)) < 1e-10


@pytest.mark.parametrize(("name", "levels"), [("tiny-4x", 1), ("tiny-8x", 2)])
def test_the_flow_checks_each_upsampled_condition_once_per_call(name, levels):
    fast, _, lr, hr = perturbed_models(name, 8, torch.float32, tol=1e-5, only="subnet")
    with mock.patch("cinn_sr.blocks.upsampled.nearest_source",
                    wraps=upsampled.nearest_source) as checks:
        fast.nll(lr, hr)
        assert checks.call_count == levels
        step, u = fast.flow_modules()["L1.step0"], fast.condition(lr)[0]
        step((torch.randn(2, step.dims_in[0][0], *u.shape[-2:]),), c=[u])
        assert checks.call_count == levels + 2  # a step alone: its injector and coupling
