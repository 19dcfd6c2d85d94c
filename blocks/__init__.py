"""Reusable FrEIA invertible modules for conditional normalizing flows (no SR knowledge).

Every block is a FrEIA `InvertibleModule` on NCHW tensors: `forward(x_or_z, c=[], rev=False,
jac=True) -> ((out, ...), logdet[B])`, forward = data -> latent.
"""

from .actnorm import ActNorm, ActNormLayer, actnorm_statistics
from .affine import SCALE_FUNCTIONS, AffineInjector, ConditionalAffineCoupling, affine_scale
from .condition_cache import ConditionCache
from .flow_step import (
    NCSR_STEP,
    SRFLOW_STEP,
    TRANSITION_STEP,
    ConditionalFlowStep,
    FlowStep,
    StepPart,
    TransitionStep,
)
from .invconv import InvConv1x1, random_rotation
from .memory_saving import DriftWarning, MemorySavingFlow
from .split import PriorSplit
from .squeeze import Squeeze, squeeze2d, unsqueeze2d
from .subnet import (
    ConvActNorm,
    SplittableSubnet,
    Subnet,
    UpsampledInputSubnet,
    ZeroConv2d,
    subnet,
)
from .upsampled import conv_over_upsampled, sharing_sources

__all__ = [
    "NCSR_STEP",
    "SCALE_FUNCTIONS",
    "SRFLOW_STEP",
    "TRANSITION_STEP",
    "ActNorm",
    "ActNormLayer",
    "AffineInjector",
    "ConditionCache",
    "ConditionalAffineCoupling",
    "ConditionalFlowStep",
    "ConvActNorm",
    "DriftWarning",
    "FlowStep",
    "InvConv1x1",
    "MemorySavingFlow",
    "PriorSplit",
    "SplittableSubnet",
    "Squeeze",
    "StepPart",
    "Subnet",
    "TransitionStep",
    "UpsampledInputSubnet",
    "ZeroConv2d",
    "actnorm_statistics",
    "affine_scale",
    "conv_over_upsampled",
    "random_rotation",
    "sharing_sources",
    "squeeze2d",
    "subnet",
    "unsqueeze2d",
]
