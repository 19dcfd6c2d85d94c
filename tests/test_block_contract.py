"""The contract every block in cinn_sr.blocks passes (in the style of nflows' transform tests).

After a first forward pass (ActNorm init) every parameter is perturbed, so zero-initialised
layers do real work; then: forward then reverse is the identity, the log-det has shape
[batch] and the reverse gives its negative, it equals log|det J| of the brute-force
Jacobian, gradients reach every parameter, and the block works inside SequenceINN and
GraphINN, with a condition batch broadcast over several samples.
"""

from __future__ import annotations

import pytest
import torch
from FrEIA.framework import ConditionNode, GraphINN, InputNode, Node, OutputNode, SequenceINN

from cinn_sr.blocks import (
    ActNorm,
    AffineInjector,
    ConditionalAffineCoupling,
    ConditionalFlowStep,
    InvConv1x1,
    PriorSplit,
    Squeeze,
    TransitionStep,
)

COND = (3, 4, 4)

# (id, block class, keyword arguments, input shape, conditioned)
BLOCKS = [
    ("actnorm", ActNorm, {}, (4, 4, 4), False),
    ("invconv-lu", InvConv1x1, {"parameterization": "lu"}, (4, 4, 4), False),
    ("invconv-full", InvConv1x1, {"parameterization": "full"}, (4, 4, 4), False),
    ("squeeze", Squeeze, {}, (2, 4, 4), False),
    ("transition", TransitionStep, {}, (4, 4, 4), False),
    ("injector-sigmoid", AffineInjector, {"hidden": 8}, (4, 4, 4), True),
    ("injector-softclamp", AffineInjector, {"hidden": 8, "scale": "softclamp"}, (4, 4, 4), True),
    ("coupling-sigmoid", ConditionalAffineCoupling, {"hidden": 8}, (4, 4, 4), True),
    ("coupling-odd-softclamp", ConditionalAffineCoupling,
     {"hidden": 8, "scale": "softclamp", "clamp": 1.5}, (5, 4, 4), True),
    ("flowstep-lu", ConditionalFlowStep, {"hidden": 8}, (4, 4, 4), True),
    ("flowstep-full-softclamp", ConditionalFlowStep,
     {"hidden": 8, "scale": "softclamp", "parameterization": "full"}, (4, 4, 4), True),
    ("split", PriorSplit, {}, (4, 4, 4), False),
    ("split-odd", PriorSplit, {}, (5, 4, 4), False),
]
IDS = [spec[0] for spec in BLOCKS]
SINGLE_OUTPUT = [spec for spec in BLOCKS if spec[1] is not PriorSplit]


def build(spec):
    _, cls, kwargs, shape, conditioned = spec
    return cls([shape], dims_c=[COND] if conditioned else None, **kwargs)


def conditions(spec, batch, dtype=torch.float32):
    return [torch.randn(batch, *COND, dtype=dtype)] if spec[4] else []


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


@pytest.mark.parametrize("spec", SINGLE_OUTPUT, ids=[s[0] for s in SINGLE_OUTPUT])
def test_inside_sequence_inn(spec):
    torch.manual_seed(1)
    _, cls, kwargs, shape, conditioned = spec
    inn = SequenceINN(*shape)
    if conditioned:
        inn.append(cls, cond=0, cond_shape=COND, **kwargs)
        inn.append(cls, cond=0, cond_shape=COND, **kwargs)
    else:
        inn.append(cls, **kwargs)
    x = torch.randn(2, *shape)
    cond = conditions(spec, 2)
    z, logdet = inn(x, c=cond) if conditioned else inn(x)
    assert logdet.shape == (2,)
    back, logdet_rev = inn(z, c=cond, rev=True) if conditioned else inn(z, rev=True)
    assert (back - x).abs().max() <= 1e-5
    torch.testing.assert_close(logdet_rev, -logdet, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", BLOCKS, ids=IDS)
def test_inside_graph_inn(spec):
    torch.manual_seed(2)
    _, cls, kwargs, shape, conditioned = spec
    inp = InputNode(*shape, name="x")
    cond_node = ConditionNode(*COND, name="u")
    node = Node(inp, cls, kwargs, conditions=cond_node if conditioned else None)
    outs = [OutputNode(node.out0)]
    if cls is PriorSplit:
        outs.append(OutputNode(node.out1))
    nodes = [inp, node, *outs] + ([cond_node] if conditioned else [])
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
    cond = torch.randn(2, *COND)
    repeated = [cond.repeat_interleave(n, dim=0)]
    # The first (initialising) pass broadcasts: the ActNorms must see the same statistics.
    twin = build(spec)
    twin.load_state_dict(block.state_dict())
    out_b, logdet_b = block((x,), c=[cond])
    out_r, logdet_r = twin((x,), c=repeated)
    for module_b, module_r in zip(block.modules(), twin.modules(), strict=True):
        if hasattr(module_b, "initialized"):
            torch.testing.assert_close(module_b.logs, module_r.logs, rtol=1e-5, atol=1e-5)
    block = build(spec)
    randomize_parameters(block, spec)
    out_b, logdet_b = block((x,), c=[cond])
    out_r, logdet_r = block((x,), c=repeated)
    torch.testing.assert_close(out_b[0], out_r[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logdet_b, logdet_r, rtol=1e-5, atol=1e-4)
    back_b, logdet_rev_b = block(out_b, c=[cond], rev=True)
    back_r, logdet_rev_r = block(out_b, c=repeated, rev=True)
    torch.testing.assert_close(back_b[0], back_r[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logdet_rev_b, logdet_rev_r, rtol=1e-5, atol=1e-4)
