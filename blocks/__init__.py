"""Reusable FrEIA invertible modules for conditional normalizing flows (no SR knowledge).

Every block is a FrEIA `InvertibleModule` on NCHW tensors: `forward(x_or_z, c=[], rev=False,
jac=True) -> ((out, ...), logdet[B])`, forward = data -> latent.
"""

from .actnorm import ActNorm, ActNormLayer, actnorm_statistics
from .affine import SCALE_FUNCTIONS, AffineInjector, ConditionalAffineCoupling, affine_scale
from .condition_cache import ConditionCache
from .flow_step import ConditionalFlowStep, TransitionStep
from .invconv import InvConv1x1, random_rotation
from .memory_saving import DriftWarning, MemorySavingFlow
from .split import PriorSplit
from .squeeze import Squeeze, squeeze2d, unsqueeze2d
from .subnet import ConvActNorm, Subnet, ZeroConv2d, subnet

__all__ = [
    "SCALE_FUNCTIONS",
    "ActNorm",
    "ActNormLayer",
    "AffineInjector",
    "ConditionCache",
    "ConditionalAffineCoupling",
    "ConditionalFlowStep",
    "ConvActNorm",
    "DriftWarning",
    "InvConv1x1",
    "MemorySavingFlow",
    "PriorSplit",
    "Squeeze",
    "Subnet",
    "TransitionStep",
    "ZeroConv2d",
    "actnorm_statistics",
    "affine_scale",
    "random_rotation",
    "squeeze2d",
    "subnet",
    "unsqueeze2d",
]
