"""Composite flow steps: SRFlow's conditional flow step and its transition step.

ConditionalFlowStep, data -> latent: ActNorm -> InvConv1x1 -> AffineInjector ->
ConditionalAffineCoupling (submodules `actnorm`, `invconv`, `injector`, `coupling`);
the reverse runs the inverses in the opposite order; the log-det is the sum of the parts'.
TransitionStep: ActNorm -> InvConv1x1 without condition (SRFlow's steps after a squeeze).
"""

from __future__ import annotations

from FrEIA.modules import InvertibleModule

from .actnorm import ActNorm
from .affine import AffineInjector, ConditionalAffineCoupling
from .invconv import InvConv1x1
from .shapes import check_conditions, check_image_input, check_no_condition


def _run_chain(parts, x_or_z, c, rev, jac):
    logdet = 0
    for part, conditioned in (reversed(parts) if rev else parts):
        kwargs = {"c": c} if conditioned else {}
        x_or_z, part_logdet = part(x_or_z, rev=rev, jac=jac, **kwargs)
        logdet = logdet + part_logdet
    return x_or_z, logdet


class ConditionalFlowStep(InvertibleModule):
    """ActNorm -> InvConv1x1 -> AffineInjector -> ConditionalAffineCoupling as one module."""

    def __init__(self, dims_in, dims_c=None, hidden: int = 64, scale: str = "sigmoid",
                 clamp: float = 2.0, parameterization: str = "lu"):
        super().__init__(dims_in, dims_c)
        check_conditions(self, check_image_input(self, dims_in, min_channels=2), dims_c)
        self.actnorm = ActNorm(dims_in)
        self.invconv = InvConv1x1(dims_in, parameterization=parameterization)
        self.injector = AffineInjector(dims_in, dims_c, hidden=hidden, scale=scale, clamp=clamp)
        self.coupling = ConditionalAffineCoupling(dims_in, dims_c, hidden=hidden, scale=scale,
                                                  clamp=clamp)

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        parts = [(self.actnorm, False), (self.invconv, False), (self.injector, True),
                 (self.coupling, True)]
        return _run_chain(parts, x_or_z, c, rev, jac)

    def output_dims(self, input_dims):
        return list(input_dims)


class TransitionStep(InvertibleModule):
    """ActNorm -> InvConv1x1 (submodules `actnorm`, `invconv`), no condition."""

    def __init__(self, dims_in, dims_c=None, parameterization: str = "lu"):
        super().__init__(dims_in, dims_c)
        check_no_condition(self, dims_c)
        check_image_input(self, dims_in)
        self.actnorm = ActNorm(dims_in)
        self.invconv = InvConv1x1(dims_in, parameterization=parameterization)

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        return _run_chain([(self.actnorm, False), (self.invconv, False)], x_or_z, c, rev, jac)

    def output_dims(self, input_dims):
        return list(input_dims)
