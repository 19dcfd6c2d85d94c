"""Build your own flow from `cinn_sr.blocks`: a custom subnet and a custom flow step.

The subnet is any `subnet_constructor(c_in, c_out)` (FrEIA's convention). The step is
SRFlow's (ActNorm, 1x1 conv, affine injector, affine coupling) plus a coupling that reads a
second condition, an edge map, the way NCSR adds its noise coupling; four of them form a
FrEIA GraphINN with two condition nodes.

    python examples/custom_flow_step.py
"""

from __future__ import annotations

import torch
from FrEIA.framework import ConditionNode, GraphINN, InputNode, Node, OutputNode
from torch import nn

from cinn_sr.blocks import SRFLOW_STEP, ConditionalAffineCoupling, FlowStep, StepPart


def gelu_subnet(c_in: int, c_out: int) -> nn.Module:
    """3x3 conv, GELU, zero-initialised 3x3 conv: each block starts condition-independent."""
    net = nn.Sequential(nn.Conv2d(c_in, 64, 3, padding=1), nn.GELU(),
                        nn.Conv2d(64, c_out, 3, padding=1))
    nn.init.zeros_(net[2].weight)
    nn.init.zeros_(net[2].bias)
    return net


# A part: (submodule name, block, indices of the step's conditions it reads, options it takes)
EDGE_STEP = (*SRFLOW_STEP,
             StepPart("edge_coupling", ConditionalAffineCoupling, (1,), ("subnet_constructor",)))


def build_flow(steps: int = 4) -> GraphINN:
    """`steps` EDGE_STEPs on a (12, 16, 16) input, conditioned on features and an edge map."""
    x = InputNode(12, 16, 16, name="x")
    features = ConditionNode(64, 16, 16, name="features")
    edges = ConditionNode(1, 16, 16, name="edges")
    nodes, previous = [x, features, edges], x
    for k in range(steps):
        previous = Node(previous, FlowStep,
                        {"parts": EDGE_STEP, "subnet_constructor": gelu_subnet},
                        conditions=[features, edges], name=f"step{k}")
        nodes.append(previous)
    return GraphINN([*nodes, OutputNode(previous, name="z")])


def main() -> None:
    torch.manual_seed(0)
    flow = build_flow()
    data = torch.randn(8, 12, 16, 16)                             # 8 inputs ...
    c = [torch.randn(2, 64, 16, 16), torch.randn(2, 1, 16, 16)]   # ... from 2 conditions
    with torch.no_grad():
        z, logdet = flow(data, c=c)                               # input i: condition i // 4
        back, _ = flow(z, c=c, rev=True)
    print("step parts:", ", ".join(name for name, _ in flow.module_list[0].named_children()))
    print(f"parameters: {sum(p.numel() for p in flow.parameters()):,}")
    print(f"log-det shape {tuple(logdet.shape)}, round trip max error "
          f"{float((back - data).abs().max()):.1e}")


if __name__ == "__main__":
    main()
