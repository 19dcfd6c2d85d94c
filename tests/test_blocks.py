"""Behaviour of the individual blocks: ActNorm init rules, InvConv1x1 parameterisations,
squeeze channel order, subnet layout, scale functions, split prior, shape validation."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from FrEIA.framework import ConditionNode, GraphINN, InputNode, Node, OutputNode

from cinn_sr.blocks import (
    ActNorm,
    AffineInjector,
    ConditionalAffineCoupling,
    ConditionalFlowStep,
    InvConv1x1,
    PriorSplit,
    Squeeze,
    TransitionStep,
    affine_scale,
    subnet,
)


def actnorm_layers(module):
    return [m for m in module.modules() if hasattr(m, "initialized")]


# ActNorm ---------------------------------------------------------------------------------


def test_actnorm_initialises_from_first_forward_batch_only():
    torch.manual_seed(0)
    norm = ActNorm([(3, 5, 5)])
    x = torch.randn(16, 3, 5, 5) * torch.tensor([2.0, 0.5, 7.0]).view(1, 3, 1, 1) + 3.0
    (z,), logdet = norm((x,))
    assert bool(norm.initialized)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(norm.bias.view(3), -x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(logdet, torch.full((16,), 25 * norm.logs.sum().item()))
    params = [norm.bias.clone(), norm.logs.clone()]
    norm((torch.randn(4, 3, 5, 5),))
    torch.testing.assert_close(norm.bias, params[0])
    torch.testing.assert_close(norm.logs, params[1])


def test_actnorm_reverse_never_initialises():
    norm = ActNorm([(2, 4, 4)])
    z = torch.randn(3, 2, 4, 4) * 5 + 1
    (x,), logdet = norm((z,), rev=True)
    assert not bool(norm.initialized)
    torch.testing.assert_close(x, z)
    torch.testing.assert_close(logdet, torch.zeros(3))
    norm((z,))
    assert bool(norm.initialized)


def test_subnet_actnorms_initialise_only_from_forward_passes():
    torch.manual_seed(0)
    step = ConditionalFlowStep([(4, 4, 4)], [(3, 4, 4)], hidden=8)
    x, u = torch.randn(2, 4, 4, 4), torch.randn(2, 3, 4, 4)
    step((x,), c=[u], rev=True)
    assert not any(bool(m.initialized) for m in actnorm_layers(step))
    step((x,), c=[u])
    assert all(bool(m.initialized) for m in actnorm_layers(step))


def test_actnorm_state_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    step = ConditionalFlowStep([(4, 4, 4)], [(3, 4, 4)], hidden=8)
    x, u = torch.randn(2, 4, 4, 4), torch.randn(2, 3, 4, 4)
    (z,), logdet = step((x,), c=[u])
    assert "actnorm.initialized" in step.state_dict()
    torch.save(step.state_dict(), tmp_path / "step.pt")

    loaded = ConditionalFlowStep([(4, 4, 4)], [(3, 4, 4)], hidden=8)
    loaded.load_state_dict(torch.load(tmp_path / "step.pt", weights_only=True))
    assert all(m.is_initialized for m in actnorm_layers(loaded))
    other = torch.randn(5, 4, 4, 4) * 3  # a different first batch must not re-initialise
    loaded((other,), c=[torch.randn(5, 3, 4, 4)])
    (z_loaded,), logdet_loaded = loaded((x,), c=[u])
    torch.testing.assert_close(z_loaded, z)
    torch.testing.assert_close(logdet_loaded, logdet)


def test_state_dict_without_initialized_flag_loads_as_initialised():
    """The reference code's files carry actnorm bias/logs but no `initialized` entry."""
    norm = ActNorm([(2, 3, 3)])
    state = {"bias": torch.ones(1, 2, 1, 1), "logs": torch.full((1, 2, 1, 1), 0.5)}
    norm.load_state_dict(state)
    assert norm.is_initialized
    (z,), _ = norm((torch.zeros(4, 2, 3, 3),))
    torch.testing.assert_close(z, torch.full_like(z, math.exp(0.5)))


def _distributed_actnorm_worker(rank, world_size, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    torch.manual_seed(100 + rank)
    norm = ActNorm([(3, 4, 4)])
    norm((torch.randn(6, 3, 4, 4) * (rank + 1) + 4 * rank,))
    gathered = [torch.zeros(2, 3) for _ in range(world_size)]
    dist.all_gather(gathered, torch.stack([norm.bias.view(3), norm.logs.view(3)]).detach())
    if rank == 0:
        torch.save(torch.stack(gathered), result_file)
    dist.destroy_process_group()


def test_actnorm_init_is_averaged_over_distributed_ranks():
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result_file = os.path.join(tmp, "init"), os.path.join(tmp, "result.pt")
        mp.start_processes(_distributed_actnorm_worker, args=(2, init_file, result_file),
                           nprocs=2, start_method="fork")
        per_rank = torch.load(result_file)
    torch.testing.assert_close(per_rank[0], per_rank[1])
    both = torch.cat([_rank_batch(0), _rank_batch(1)])
    torch.testing.assert_close(per_rank[0][0], -both.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
    std = both.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(per_rank[0][1], -torch.log(std + 1e-6), atol=1e-5, rtol=1e-5)


def _rank_batch(rank):
    torch.manual_seed(100 + rank)
    ActNorm([(3, 4, 4)])  # consumes the same random numbers as in the worker
    return torch.randn(6, 3, 4, 4) * (rank + 1) + 4 * rank


# InvConv1x1 ------------------------------------------------------------------------------


@pytest.mark.parametrize("parameterization", ["lu", "full"])
def test_invconv_starts_as_rotation_and_sets_weights_exactly(parameterization):
    torch.manual_seed(0)
    conv = InvConv1x1([(6, 3, 3)], parameterization=parameterization)
    w = conv.weight_matrix().detach()
    torch.testing.assert_close(w @ w.T, torch.eye(6), atol=1e-5, rtol=0)
    target = torch.randn(6, 6)
    conv.set_weight_matrix(target)
    torch.testing.assert_close(conv.weight_matrix().detach(), target, atol=1e-6, rtol=1e-6)
    x = torch.randn(2, 6, 3, 3)
    (z,), logdet = conv((x,))
    torch.testing.assert_close(z, torch.einsum("ij,bjhw->bihw", target, x), atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(logdet, torch.full((2,), 9 * torch.linalg.slogdet(target)[1]))


def test_invconv_parameterisations_agree_and_count_c_squared():
    torch.manual_seed(1)
    lu = InvConv1x1([(5, 4, 4)], parameterization="lu")
    full = InvConv1x1([(5, 4, 4)], parameterization="full")
    full.set_weight_matrix(lu.weight_matrix().detach())
    assert sum(p.numel() for p in lu.parameters()) == 25
    assert sum(p.numel() for p in full.parameters()) == 25
    assert set(dict(full.named_parameters())) == {"weight"}
    z = torch.randn(3, 5, 4, 4)
    for rev in (False, True):
        (a,), la = lu((z,), rev=rev)
        (b,), lb = full((z,), rev=rev)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-5)


def test_invconv_rejects_unknown_parameterisation():
    with pytest.raises(ValueError, match="InvConv1x1.*parameterization"):
        InvConv1x1([(4, 2, 2)], parameterization="qr")


# Squeeze -------------------------------------------------------------------------------


def test_squeeze_channel_order_matches_reference():
    x = torch.randn(2, 3, 6, 4)
    (z,), logdet = Squeeze([(3, 6, 4)])((x,))
    assert z.shape == (2, 12, 3, 2)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                torch.testing.assert_close(z[:, 4 * c + 2 * i + j], x[:, c, i::2, j::2])
    torch.testing.assert_close(logdet, torch.zeros(2))


def test_blocks_take_spatial_size_from_runtime_tensors():
    torch.manual_seed(0)
    step = ConditionalFlowStep([(4, 8, 8)], [(3, 8, 8)], hidden=8)
    split = PriorSplit([(4, 8, 8)])
    x, u = torch.randn(2, 4, 6, 10), torch.randn(2, 3, 6, 10)
    (z,), logdet = step((x,), c=[u])
    (back,), _ = step((z,), c=[u], rev=True)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    (kept, eps), _ = split((z,))
    assert kept.shape == eps.shape == (2, 2, 6, 10)
    (squeezed,), _ = Squeeze([(4, 8, 8)])((x,))
    assert squeezed.shape == (2, 16, 3, 5)
    an = step.actnorm
    torch.testing.assert_close(an((x,))[1], torch.full((2,), 60 * an.logs.sum().item()))


# Subnet and affine blocks --------------------------------------------------------------


def test_subnet_layout_matches_reference_state_dict():
    torch.manual_seed(0)
    net = subnet(10, 6, hidden=64)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes == {
        "0.weight": (64, 10, 3, 3), "0.actnorm.bias": (1, 64, 1, 1),
        "0.actnorm.logs": (1, 64, 1, 1), "0.actnorm.initialized": (),
        "2.weight": (64, 64, 1, 1), "2.actnorm.bias": (1, 64, 1, 1),
        "2.actnorm.logs": (1, 64, 1, 1), "2.actnorm.initialized": (),
        "4.weight": (6, 64, 3, 3), "4.bias": (6,), "4.logs": (6, 1, 1),
    }
    assert abs(net[0].weight.std().item() - 0.05) < 0.005
    assert isinstance(net[1], torch.nn.ReLU) and isinstance(net[3], torch.nn.ReLU)
    out = net(torch.randn(2, 10, 5, 5))
    assert out.shape == (2, 6, 5, 5) and not out.any()


def test_flow_step_layout_maps_onto_reference_names():
    """SRFlow's FlowStep: actnorm, invconv.weight, affine.fFeatures (injector), affine.fAffine."""
    step = ConditionalFlowStep([(12, 8, 8)], [(320, 8, 8)], parameterization="full")
    assert [name for name, _ in step.named_children()] == ["actnorm", "invconv", "injector",
                                                           "coupling"]
    shapes = {k: tuple(v.shape) for k, v in step.state_dict().items()}
    assert shapes["actnorm.bias"] == (1, 12, 1, 1) and shapes["invconv.weight"] == (12, 12)
    assert shapes["injector.subnet.0.weight"] == (64, 320, 3, 3)
    assert shapes["injector.subnet.4.weight"] == (24, 64, 3, 3)
    assert shapes["coupling.subnet.0.weight"] == (64, 6 + 320, 3, 3)
    assert shapes["coupling.subnet.4.logs"] == (12, 1, 1)
    transition = TransitionStep([(12, 8, 8)], parameterization="full")
    assert set(transition.state_dict()) == {"actnorm.bias", "actnorm.logs",
                                            "actnorm.initialized", "invconv.weight"}


def test_scale_functions():
    raw = torch.linspace(-30, 30, 7)
    scale, log_scale = affine_scale(raw, "sigmoid")
    torch.testing.assert_close(scale, torch.sigmoid(raw + 2) + 1e-4)
    torch.testing.assert_close(log_scale, torch.log(scale))
    assert scale.min() >= 1e-4 and scale.max() <= 1 + 1e-4
    scale, log_scale = affine_scale(raw, "softclamp", clamp=1.5)
    torch.testing.assert_close(log_scale, 1.5 * torch.tanh(raw / 1.5))
    assert log_scale.abs().max() <= 1.5
    assert affine_scale(torch.zeros(1), "softclamp")[0].item() == 1.0


@pytest.mark.parametrize("scale_name, scale_at_init", [("sigmoid", 1 / (1 + math.exp(-2)) + 1e-4),
                                                       ("softclamp", 1.0)])
def test_injector_at_init_is_a_constant_scale(scale_name, scale_at_init):
    torch.manual_seed(0)
    injector = AffineInjector([(4, 3, 3)], [(2, 3, 3)], hidden=8, scale=scale_name)
    x = torch.randn(2, 4, 3, 3)
    (z,), logdet = injector((x,), c=[torch.randn(2, 2, 3, 3)])
    torch.testing.assert_close(z, x * scale_at_init)
    torch.testing.assert_close(logdet, torch.full((2,), 36 * math.log(scale_at_init)))


def test_affine_blocks_use_cross_split_shift_then_scale():
    injector = AffineInjector([(2, 1, 1)], [(1, 1, 1)], hidden=4)
    coupling = ConditionalAffineCoupling([(3, 1, 1)], [(1, 1, 1)], hidden=4)
    with torch.no_grad():
        injector.subnet[4].bias.copy_(torch.tensor([0.5, 1.0, -2.0, 3.0]))
        coupling.subnet[4].bias.copy_(torch.tensor([0.25, -1.0, 1.5, 0.0]))
    u = torch.zeros(1, 1, 1, 1)
    x = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    (z,), _ = injector((x,), c=[u])
    expected = (torch.tensor([1.5, 0.0]) * (torch.sigmoid(torch.tensor([3.0, 5.0])) + 1e-4))
    torch.testing.assert_close(z.view(2), expected)
    x = torch.tensor([7.0, 1.0, 2.0]).view(1, 3, 1, 1)
    (z,), _ = coupling((x,), c=[u])
    expected = torch.tensor([1.25, 3.5]) * (torch.sigmoid(torch.tensor([1.0, 2.0])) + 1e-4)
    torch.testing.assert_close(z.view(3), torch.cat([torch.tensor([7.0]), expected]))


def test_injector_runs_its_subnet_once_per_condition():
    torch.manual_seed(0)
    injector = AffineInjector([(4, 4, 4)], [(3, 4, 4)], hidden=8)
    seen = []
    injector.subnet.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    injector((torch.randn(10, 4, 4, 4),), c=[torch.randn(2, 3, 4, 4)])
    assert seen == [2]
    with pytest.raises(ValueError, match="AffineInjector: input batch 9 is not a multiple"):
        injector((torch.randn(9, 4, 4, 4),), c=[torch.randn(2, 3, 4, 4)])
    with pytest.raises(ValueError, match="AffineInjector: needs a condition, got none"):
        injector((torch.randn(2, 4, 4, 4),))


def test_several_conditions_are_concatenated():
    torch.manual_seed(0)
    coupling = ConditionalAffineCoupling([(4, 4, 4)], [(2, 4, 4), (3, 4, 4)], hidden=8)
    with torch.no_grad():
        for p in coupling.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, a, b = torch.randn(2, 4, 4, 4), torch.randn(2, 2, 4, 4), torch.randn(2, 3, 4, 4)
    twin = ConditionalAffineCoupling([(4, 4, 4)], [(5, 4, 4)], hidden=8)
    twin.load_state_dict(coupling.state_dict())
    (z,), logdet = coupling((x,), c=[a, b])
    (z_cat,), logdet_cat = twin((x,), c=[torch.cat([a, b], dim=1)])
    torch.testing.assert_close(z, z_cat)
    torch.testing.assert_close(logdet, logdet_cat)


# PriorSplit ------------------------------------------------------------------------------


def test_prior_split_standardises_with_learned_prior():
    split = PriorSplit([(5, 2, 2)])
    assert split.output_dims([(5, 2, 2)]) == [(2, 2, 2), (3, 2, 2)]
    x = torch.randn(2, 5, 2, 2)
    (kept, eps), logdet = split((x,))
    torch.testing.assert_close(kept, x[:, :2])
    torch.testing.assert_close(eps, x[:, 2:])
    torch.testing.assert_close(logdet, torch.zeros(2))
    with torch.no_grad():
        split.conv.bias.copy_(torch.tensor([1.0, 0.5, -1.0, 0.0, 2.0, -0.5]))
    (kept, eps), logdet = split((x,))
    mean, logstd = torch.tensor([1.0, -1.0, 2.0]), torch.tensor([0.5, 0.0, -0.5])
    torch.testing.assert_close(eps, (x[:, 2:] - mean.view(1, 3, 1, 1))
                               / logstd.exp().view(1, 3, 1, 1))
    torch.testing.assert_close(logdet, torch.full((2,), -4 * logstd.sum().item()))
    (mode,), _ = split((kept, torch.zeros_like(eps)), rev=True)
    torch.testing.assert_close(mode[:, 2:], mean.view(1, 3, 1, 1).expand(2, 3, 2, 2))


# Shape validation at construction ----------------------------------------------------------


@pytest.mark.parametrize("cls", [AffineInjector, ConditionalAffineCoupling, ConditionalFlowStep])
def test_condition_of_wrong_spatial_size_fails_at_construction(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: condition shape must be "
                                         r"\(C_c, 8, 8\).*got \(16, 4, 4\)"):
        cls([(4, 8, 8)], [(16, 4, 4)])
    with pytest.raises(ValueError, match=f"{cls.__name__}: needs a condition"):
        cls([(4, 8, 8)])


def test_wrong_shapes_fail_when_the_graph_is_built():
    inp, cond = InputNode(4, 8, 8), ConditionNode(16, 4, 4)
    with pytest.raises(ValueError, match=r"ConditionalFlowStep: condition shape"):
        node = Node(inp, ConditionalFlowStep, {"hidden": 8}, conditions=cond)
        GraphINN([inp, node, OutputNode(node), cond])
    with pytest.raises(ValueError, match=r"Squeeze: expected even height and width, got "
                                         r"input shape \(3, 5, 6\)"):
        Squeeze([(3, 5, 6)])
    with pytest.raises(ValueError, match="ActNorm: takes no condition"):
        ActNorm([(3, 4, 4)], [(2, 4, 4)])
    with pytest.raises(ValueError, match=r"PriorSplit: expected an input with at least 2"):
        PriorSplit([(1, 4, 4)])
    with pytest.raises(ValueError, match=r"InvConv1x1: expected one input of shape \(C, H, W\)"):
        InvConv1x1([(16,)])
