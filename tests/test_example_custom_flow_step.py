"""The README's "Build your own flow" example: a custom subnet and step in a GraphINN."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_flow_step.py"


def load_example():
    spec = importlib.util.spec_from_file_location("custom_flow_step", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_custom_flow_inverts_reads_both_conditions_and_trains_every_parameter():
    example = load_example()
    torch.manual_seed(0)
    flow = example.build_flow(steps=2)
    data = torch.randn(4, 12, 16, 16)
    c = [torch.randn(2, 64, 16, 16), torch.randn(2, 1, 16, 16)]
    flow(data, c=c)  # initialises the ActNorms
    with torch.no_grad():  # let the zero-initialised output layers act
        for module in flow.modules():
            if isinstance(module, torch.nn.Sequential):
                module[2].weight.normal_(0, 0.01)
    z, logdet = flow(data, c=c)
    back, _ = flow(z, c=c, rev=True)
    assert (back - data).abs().max() < 1e-4
    other_edges, _ = flow(data, c=[c[0], torch.randn(2, 1, 16, 16)])
    assert (other_edges - z).abs().max() > 1e-3
    (0.5 * (z ** 2).sum() - logdet.sum()).backward()
    for name, parameter in flow.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
