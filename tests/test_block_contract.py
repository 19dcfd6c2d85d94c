"""The contract every block in cinn_sr.blocks passes (in the style of nflows' transform tests).

After a first forward pass (ActNorm init) every parameter is perturbed, so zero-initialised
layers do real work; then: forward then reverse is the identity, the log-det has shape
[batch] and the reverse gives its negative, it equals log|det J| of the brute-force
Jacobian, gradients reach every parameter, and the block works inside SequenceINN and
GraphINN, with a condition batch broadcast over several samples. The affine blocks and flow
steps run with SRFlow's subnet, with a custom subnet that declares its first-layer split
(`SplittableSubnet`, the fast path) and with a plain one that does not.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from FrEIA.framework import ConditionNode, GraphINN, InputNode, Node, OutputNode, SequenceINN
from torch import nn

from cinn_sr.blocks import (
    NCSR_STEP,
    ActNorm,
    AffineInjector,
    ConditionalAffineCoupling,
    ConditionalFlowStep,
    InvConv1x1,
    PriorSplit,
    SplittableSubnet,
    Squeeze,
    TransitionStep,
)

COND = (3, 4, 4)


class GeluSubnet(nn.Module):
    """Two 3x3 convs with a GELU between them, the last zero-initialised; splittable."""

    def __init__(self, c_in: int, c_out: int, hidden: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, allow_init=True):
        return self.finish(self.first_layer(x, 0, bias=True))

    def first_layer(self, x, start, bias=False):
        weight = self.conv1.weight[:, start : start + x.shape[1]]
        return F.conv2d(x, weight, self.conv1.bias if bias else None, padding=1)

    def finish(self, h, allow_init=True):
        return self.conv2(F.gelu(h))


def plain_subnet(c_in: int, c_out: int) -> nn.Module:
    """The same layers as an nn.Sequential: no declared split, so no fast path."""
    net = nn.Sequential(nn.Conv2d(c_in, 8, 3, padding=1), nn.GELU(),
                        nn.Conv2d(8, c_out, 3, padding=1))
    nn.init.zeros_(net[2].weight)
    nn.init.zeros_(net[2].bias)
    return net


def test_custom_subnets_declare_the_split_or_not():
    assert isinstance(GeluSubnet(4, 2), SplittableSubnet)
    assert not isinstance(plain_subnet(4, 2), SplittableSubnet)


GELU, PLAIN = {"subnet_constructor": GeluSubnet}, {"subnet_constructor": plain_subnet}

# (id, block class, keyword arguments, input shape, number of conditions)
BLOCKS = [
    ("actnorm", ActNorm, {}, (4, 4, 4), 0),
    ("invconv-lu", InvConv1x1, {"parameterization": "lu"}, (4, 4, 4), 0),
    ("invconv-full", InvConv1x1, {"parameterization": "full"}, (4, 4, 4), 0),
    ("squeeze", Squeeze, {}, (2, 4, 4), 0),
    ("transition", TransitionStep, {}, (4, 4, 4), 0),
    ("injector-sigmoid", AffineInjector, {"hidden": 8}, (4, 4, 4), 1),
    ("injector-softclamp", AffineInjector, {"hidden": 8, "scale": "softclamp"}, (4, 4, 4), 1),
    ("injector-gelu", AffineInjector, GELU, (4, 4, 4), 1),
    ("injector-plain", AffineInjector, PLAIN, (4, 4, 4), 1),
    ("coupling-sigmoid", ConditionalAffineCoupling, {"hidden": 8}, (4, 4, 4), 1),
    ("coupling-odd-softclamp", ConditionalAffineCoupling,
     {"hidden": 8, "scale": "softclamp", "clamp": 1.5}, (5, 4, 4), 1),
    ("coupling-gelu", ConditionalAffineCoupling, GELU, (5, 4, 4), 1),
    ("coupling-plain", ConditionalAffineCoupling, PLAIN, (5, 4, 4), 1),
    ("flowstep-lu", ConditionalFlowStep, {"hidden": 8}, (4, 4, 4), 1),
    ("flowstep-full-softclamp", ConditionalFlowStep,
     {"hidden": 8, "scale": "softclamp", "parameterization": "full"}, (4, 4, 4), 1),
    ("flowstep-gelu", ConditionalFlowStep, GELU, (4, 4, 4), 1),
    ("flowstep-plain", ConditionalFlowStep, PLAIN, (4, 4, 4), 1),
    ("flowstep-ncsr", ConditionalFlowStep, {"hidden": 8, "parts": NCSR_STEP}, (4, 4, 4), 2),
    ("flowstep-ncsr-plain", ConditionalFlowStep, {**PLAIN, "parts": NCSR_STEP}, (4, 4, 4), 2),
    ("split", PriorSplit, {}, (4, 4, 4), 0),
    ("split-odd", PriorSplit, {}, (5, 4, 4), 0),
]
IDS = [spec[0] for spec in BLOCKS]
SINGLE_OUTPUT = [spec for spec in BLOCKS if spec[1] is not PriorSplit]


def build(spec):
    _, cls, kwargs, shape, n_conditions = spec
    return cls([shape], dims_c=[COND] * n_conditions or None, **kwargs)


def conditions(spec, batch, dtype=torch.float32):
    return [torch.randn(batch, *COND, dtype=dtype) for _ in range(spec[4])]


def run(block, inputs, cond, rev=False):
    if cond:
        return block(inputs, c=cond, rev=rev)
    return block(inputs, rev=rev)


@torch.no_grad()
def randomize_parameters(block, spec, scale=0.2):
    """Perturb every parameter of a fresh block, then initialise its ActNorms from data.

    The ActNorm init overwrites their own perturbation with data-dependent (non-trivial)
    values and keeps the subnets' hidden activations normalised.
    """
    for parameter in block.parameters():
        parameter.add_(scale * torch.randn_like(parameter))
    run(block, (torch.randn(8, *spec[3]),), conditions(spec, 8))


@pytest.fixture(params=BLOCKS, ids=IDS)
def spec_and_block(request):
    torch.manual_seed(0)
    block = build(request.param)
    randomize_parameters(block, request.param)
    return request.param, block


def test_forward_then_reverse_is_identity(spec_and_block):
    spec, block = spec_and_block
    x = torch.randn(3, *spec[3])
    cond = conditions(spec, 3)
    out, logdet = run(block, (x,), cond)
    assert logdet.shape == (3,)
    dims = block.output_dims([spec[3]])
    assert all(o.shape[1:] == tuple(d) for o, d in zip(out, dims, strict=True))
    back, logdet_rev = run(block, out, cond, rev=True)
    assert len(back) == 1 and back[0].shape == x.shape
    assert (back[0] - x).abs().max() <= 1e-5
    torch.testing.assert_close(logdet_rev, -logdet, rtol=1e-5, atol=1e-5)


def test_logdet_matches_brute_force_jacobian(spec_and_block):
    spec, block = spec_and_block
    block = block.double()
    x = torch.randn(1, *spec[3], dtype=torch.float64)
    cond = conditions(spec, 1, torch.float64)

    def flat_map(flat):
        out, _ = run(block, (flat.view(1, *spec[3]),), cond)
        return torch.cat([o.reshape(-1) for o in out])

    jacobian = torch.autograd.functional.jacobian(flat_map, x.reshape(-1))
    _, logdet = run(block, (x,), cond)
    expected = torch.linalg.slogdet(jacobian)[1]
    torch.testing.assert_close(logdet[0], expected, rtol=1e-6, atol=1e-9)


def test_gradients_reach_every_parameter(spec_and_block):
    spec, block = spec_and_block
    x = torch.randn(2, *spec[3], requires_grad=True)
    out, logdet = run(block, (x,), conditions(spec, 2))
    loss = sum((o ** 2).sum() for o in out) - logdet.sum()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, parameter in block.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


ONE_CONDITION = [spec for spec in SINGLE_OUTPUT if spec[4] < 2]  # SequenceINN's limit


@pytest.mark.parametrize("spec", ONE_CONDITION, ids=[s[0] for s in ONE_CONDITION])
def test_inside_sequence_inn(spec):
    torch.manual_seed(1)
    _, cls, kwargs, shape, n_conditions = spec
    inn = SequenceINN(*shape)
    if n_conditions:
        inn.append(cls, cond=0, cond_shape=COND, **kwargs)
        inn.append(cls, cond=0, cond_shape=COND, **kwargs)
    else:
        inn.append(cls, **kwargs)
    x = torch.randn(2, *shape)
    cond = conditions(spec, 2)
    z, logdet = inn(x, c=cond) if n_conditions else inn(x)
    assert logdet.shape == (2,)
    back, logdet_rev = inn(z, c=cond, rev=True) if n_conditions else inn(z, rev=True)
    assert (back - x).abs().max() <= 1e-5
    torch.testing.assert_close(logdet_rev, -logdet, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", BLOCKS, ids=IDS)
def test_inside_graph_inn(spec):
    torch.manual_seed(2)
    _, cls, kwargs, shape, n_conditions = spec
    inp = InputNode(*shape, name="x")
    cond_nodes = [ConditionNode(*COND, name=f"u{i}") for i in range(n_conditions)]
    node = Node(inp, cls, kwargs, conditions=cond_nodes or None)
    outs = [OutputNode(node.out0)]
    if cls is PriorSplit:
        outs.append(OutputNode(node.out1))
    nodes = [inp, node, *outs, *cond_nodes]
    graph = GraphINN(nodes, force_tuple_output=True)
    x = torch.randn(2, *shape)
    cond = conditions(spec, 2)
    z, logdet = graph(x, c=cond)
    assert len(z) == len(outs) and logdet.shape == (2,)
    back, logdet_rev = graph(z, c=cond, rev=True)
    assert (back[0] - x).abs().max() <= 1e-5
    torch.testing.assert_close(logdet_rev, -logdet, rtol=1e-5, atol=1e-5)


CONDITIONED = [spec for spec in BLOCKS if spec[4]]


@pytest.mark.parametrize("spec", CONDITIONED, ids=[s[0] for s in CONDITIONED])
def test_condition_broadcast_equals_repetition(spec):
    torch.manual_seed(3)
    block = build(spec)
    n = 3
    x = torch.randn(2 * n, *spec[3])
    cond = conditions(spec, 2)
    repeated = [u.repeat_interleave(n, dim=0) for u in cond]
    # The first (initialising) pass broadcasts: the ActNorms must see the same statistics.
    twin = build(spec)
    twin.load_state_dict(block.state_dict())
    out_b, logdet_b = block((x,), c=cond)
    out_r, logdet_r = twin((x,), c=repeated)
    for module_b, module_r in zip(block.modules(), twin.modules(), strict=True):
        if hasattr(module_b, "initialized"):
            torch.testing.assert_close(module_b.logs, module_r.logs, rtol=1e-5, atol=1e-5)
    block = build(spec)
    randomize_parameters(block, spec)
    out_b, logdet_b = block((x,), c=cond)
    out_r, logdet_r = block((x,), c=repeated)
    torch.testing.assert_close(out_b[0], out_r[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logdet_b, logdet_r, rtol=1e-5, atol=1e-4)
    back_b, logdet_rev_b = block(out_b, c=cond, rev=True)
    back_r, logdet_rev_r = block(out_b, c=repeated, rev=True)
    torch.testing.assert_close(back_b[0], back_r[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logdet_rev_b, logdet_rev_r, rtol=1e-5, atol=1e-4)


def test_coupling_takes_the_fast_path_only_for_a_splittable_subnet():
    torch.manual_seed(4)
    calls = []

    class Recording(GeluSubnet):
        def first_layer(self, x, start, bias=False):
            calls.append((start, x.shape[0], bias))
            return super().first_layer(x, start, bias)

    x, u = torch.randn(6, 5, 4, 4), torch.randn(2, *COND)
    fast = ConditionalAffineCoupling([(5, 4, 4)], [COND], subnet_constructor=Recording)
    fast((x,), c=[u])
    assert calls == [(0, 6, False), (2, 2, True)]  # the condition's share: once per condition
    seen = []
    plain = ConditionalAffineCoupling([(5, 4, 4)], [COND], subnet_constructor=plain_subnet)
    plain.subnet.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape))
    plain((x,), c=[u])
    assert seen == [torch.Size([6, 2 + 3, 4, 4])]  # the condition repeated per sample


def test_flow_step_checks_its_parts_options_and_conditions():
    with pytest.raises(ValueError, match="no part takes the option"):
        ConditionalFlowStep([(4, 4, 4)], [COND], hiden=8)
    with pytest.raises(ValueError, match=r"read conditions \[0, 1\], got 1 condition"):
        ConditionalFlowStep([(4, 4, 4)], [COND], parts=NCSR_STEP)
    step = ConditionalFlowStep([(4, 4, 4)], [COND, COND], parts=NCSR_STEP, hidden=8)
    assert [name for name, _ in step.named_children()] == [
        "actnorm", "invconv", "injector", "noise_coupling", "coupling"]
    with pytest.raises(ValueError, match="takes no condition"):
        TransitionStep([(4, 4, 4)], [COND])
