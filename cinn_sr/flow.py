"""SRFlow's invertible network f(y; u) as a FrEIA GraphINN, built from `cinn_sr.blocks`.

Per level l = 1..L, in the HR -> latent direction (SRFlow paper, section 3.3):

    Squeeze (C, H, W) -> (4C, H/2, W/2)
    n_transitions x TransitionStep (ActNorm -> InvConv1x1, no condition)
    K x ConditionalFlowStep conditioned on level l's ConditionNode (SRFLOW_STEP); for NCSR
      (`noise_steps`) the last noise_steps[l-1] of them are NCSR_STEP, which also read
      level l's noise map
    PriorSplit on the split levels: the emitted half leaves the flow as a latent

The last level's output is the last latent. Latents are ordered as the OutputNodes: the
split latents from the HR side first, then the final one. Every latent is N(0, I) under
the model. Conditions are passed level 1 (HR side) first, then the noise maps of the noise
levels (`config.noise_levels`, in_channels each), in level order.

At a level f >= 2 times the LR's resolution, the encoder's condition is the base feature
(nf channels) followed by the stacked trunk features nearest-upsampled by f: the steps are
told so (`upsampled`), and compute their condition convolutions over those channels at the
LR resolution (`cinn_sr.blocks.upsampled`, 4/9 of the multiply-adds), the same function
and the same gradients for the encoder. The graph (`ConditionalFlow`) has its blocks split
each condition tensor once per call.
"""

from __future__ import annotations

import torch
from FrEIA.framework import ConditionNode, GraphINN, InputNode, Node, OutputNode

from cinn_sr.blocks import (
    NCSR_STEP,
    SRFLOW_STEP,
    ConditionalFlowStep,
    PriorSplit,
    Squeeze,
    TransitionStep,
)
from cinn_sr.blocks.upsampled import sharing_sources
from cinn_sr.presets import SRFlowConfig


class ConditionalFlow(GraphINN):
    """A GraphINN whose blocks share the split of each condition tensor during a call
    (under torch.compile there is no check to share: see `upsampled.split_source`)."""

    def forward(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return super().forward(*args, **kwargs)
        with sharing_sources():
            return super().forward(*args, **kwargs)


def latent_shapes(config: SRFlowConfig, hr_h: int, hr_w: int) -> list[tuple[int, int, int]]:
    """(C, H, W) of each latent for an HR image of hr_h x hr_w (multiples of 2^L)."""
    if hr_h % config.hr_multiple or hr_w % config.hr_multiple:
        raise ValueError(
            f"HR size {hr_h}x{hr_w} is not a multiple of {config.hr_multiple} (2^L)"
        )
    channels, h, w = config.in_channels, hr_h, hr_w
    shapes = []
    for level in range(1, config.L + 1):
        channels, h, w = channels * 4, h // 2, w // 2
        if level in config.split_levels:
            shapes.append((channels - channels // 2, h, w))
            channels = channels // 2
    shapes.append((channels, h, w))
    return shapes


def upsampled_channels(config: SRFlowConfig, level: int) -> tuple[int, int] | None:
    """(first channel, factor) of level `level`'s nearest-upsampled condition channels, or
    None where the level has none (no stacked blocks, or a factor below 2)."""
    factor = config.level_factors[level - 1]
    if not config.stack_blocks or factor < 2:
        return None
    return config.nf, int(factor)


def build_flow(config: SRFlowConfig) -> GraphINN:
    """The GraphINN of `config`; it runs on any HR size that is a multiple of 2^L.

    Nodes are named `L{level}.squeeze`, `L{level}.transition{t}`, `L{level}.step{k}`,
    `L{level}.split` (see `named_flow_modules`): one node per layer of the reference code's
    `flowUpsamplerNet.layers`, in the same order. The graph is built at a nominal HR size
    of 2^L x 2^L.
    """
    size = config.hr_multiple
    hr = InputNode(config.in_channels, size, size, name="hr")
    conditions = [
        ConditionNode(
            config.cond_channels, size >> level, size >> level, name=f"L{level}.condition"
        )
        for level in range(1, config.L + 1)
    ]
    noise_maps = {
        level: ConditionNode(config.in_channels, size >> level, size >> level,
                             name=f"L{level}.noise")
        for level in config.noise_levels
    }
    nodes: list = [hr, *conditions, *noise_maps.values()]
    latents = []
    x = hr
    for level in range(1, config.L + 1):
        x = Node(x, Squeeze, {}, name=f"L{level}.squeeze")
        nodes.append(x)
        for t in range(config.n_transitions):
            x = Node(
                x, TransitionStep, {"parameterization": config.invconv},
                name=f"L{level}.transition{t}",
            )
            nodes.append(x)
        n_noisy = config.noise_steps[level - 1] if config.noise_steps else 0
        for k in range(config.K):
            noisy = k >= config.K - n_noisy
            x = Node(
                x,
                ConditionalFlowStep,
                {
                    "parts": NCSR_STEP if noisy else SRFLOW_STEP,
                    "hidden": config.hidden,
                    "scale": config.scale_fn,
                    "clamp": config.clamp,
                    "parameterization": config.invconv,
                    "upsampled": upsampled_channels(config, level),
                },
                conditions=[conditions[level - 1], *([noise_maps[level]] if noisy else [])],
                name=f"L{level}.step{k}",
            )
            nodes.append(x)
        if level in config.split_levels:
            split = Node(x, PriorSplit, {}, name=f"L{level}.split")
            latent = OutputNode((split, 1), name=f"L{level}.latent")
            nodes += [split, latent]
            latents.append(latent)
            x = (split, 0)
    latents.append(OutputNode(x, name=f"L{config.L}.latent"))
    nodes.append(latents[-1])
    return ConditionalFlow(nodes, force_tuple_output=True)


def named_flow_modules(flow: GraphINN) -> dict:
    """{node name: module} of the flow's invertible modules, in HR -> latent order."""
    return {node.name: node.module for node in flow.node_list if node.module is not None}
