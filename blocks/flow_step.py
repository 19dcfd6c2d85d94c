"""Composite flow steps: one builder, `FlowStep`, whose composition is a tuple of `StepPart`s.

A part names a submodule, the block class (any callable `(dims_in, dims_c, **kwargs)` that
returns a shape-preserving FrEIA `InvertibleModule`), which of the step's conditions it
reads, and which of the step's options it takes. Data -> latent runs the parts in order;
the reverse runs their inverses in the opposite order; the log-det is the sum of the parts'.

- `SRFLOW_STEP` (SRFlow's conditional flow step): ActNorm -> InvConv1x1 -> AffineInjector
  -> ConditionalAffineCoupling, both affine blocks reading condition 0 and taking the
  option `upsampled` (see `affine.py`).
- `NCSR_STEP` (NCSR's noise-conditioned step): the same, with a second coupling after the
  injector that reads condition 1 (the noise map) and transforms the same half of the
  channels as the feature coupling that follows it (`upsampled` goes to the injector and
  the feature coupling only).
- `TRANSITION_STEP` (SRFlow's steps after a squeeze): ActNorm -> InvConv1x1, no condition.

`ConditionalFlowStep` and `TransitionStep` are `FlowStep` with those parts as defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from FrEIA.modules import InvertibleModule

from .actnorm import ActNorm
from .affine import AffineInjector, ConditionalAffineCoupling
from .invconv import InvConv1x1
from .shapes import check_conditions, check_image_input, check_no_condition

AFFINE_OPTIONS = ("hidden", "scale", "clamp", "subnet_constructor")
CONDITION_OPTIONS = (*AFFINE_OPTIONS, "upsampled")


@dataclass(frozen=True)
class StepPart:
    """One block of a flow step: submodule `name`, `block` class, the indices of the step's
    conditions it reads (none: unconditioned) and the names of the step options it takes."""

    name: str
    block: type
    conditions: tuple[int, ...] = ()
    options: tuple[str, ...] = ()


TRANSITION_STEP = (
    StepPart("actnorm", ActNorm),
    StepPart("invconv", InvConv1x1, options=("parameterization",)),
)
SRFLOW_STEP = (
    *TRANSITION_STEP,
    StepPart("injector", AffineInjector, (0,), CONDITION_OPTIONS),
    StepPart("coupling", ConditionalAffineCoupling, (0,), CONDITION_OPTIONS),
)
NCSR_STEP = (
    *SRFLOW_STEP[:3],
    StepPart("noise_coupling", ConditionalAffineCoupling, (1,), AFFINE_OPTIONS),
    SRFLOW_STEP[3],
)


class FlowStep(InvertibleModule):
    """The parts of `parts` as one module (submodules named by the parts), sharing `options`.

    Each option goes to the parts that list it; an option no part takes is a ValueError.
    """

    def __init__(self, dims_in, dims_c=None, parts: tuple[StepPart, ...] = SRFLOW_STEP,
                 **options):
        super().__init__(dims_in, dims_c)
        shape = check_image_input(self, dims_in)
        dims_c = list(dims_c or [])
        self._check_parts(parts, dims_c, options)
        if dims_c:
            check_conditions(self, shape, dims_c)
        self.parts = tuple(parts)
        for part in self.parts:
            kwargs = {k: options[k] for k in part.options if k in options}
            part_dims_c = [dims_c[i] for i in part.conditions] or None
            block = part.block(dims_in, part_dims_c, **kwargs)
            if [tuple(d) for d in block.output_dims(dims_in)] != [tuple(dims_in[0])]:
                raise ValueError(f"{type(self).__name__}: part {part.name!r} changes the shape")
            self.add_module(part.name, block)

    def _check_parts(self, parts, dims_c, options) -> None:
        name = type(self).__name__
        if not parts:
            raise ValueError(f"{name}: needs at least one part")
        names = [part.name for part in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"{name}: part names must differ, got {names}")
        used = {i for part in parts for i in part.conditions}
        if used != set(range(len(dims_c))):
            raise ValueError(f"{name}: its parts read conditions {sorted(used)}, "
                             f"got {len(dims_c)} condition(s)")
        unknown = sorted(set(options) - {o for part in parts for o in part.options})
        if unknown:
            raise ValueError(f"{name}: no part takes the option(s) {', '.join(unknown)}")

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        c = list(c or [])
        logdet = 0
        for part in reversed(self.parts) if rev else self.parts:
            kwargs = {"c": [c[i] for i in part.conditions]} if part.conditions else {}
            x_or_z, part_logdet = getattr(self, part.name)(x_or_z, rev=rev, jac=jac, **kwargs)
            logdet = logdet + part_logdet
        return x_or_z, logdet

    def output_dims(self, input_dims):
        return list(input_dims)


class ConditionalFlowStep(FlowStep):
    """SRFlow's conditional flow step (`SRFLOW_STEP`) unless other `parts` are given."""

    def __init__(self, dims_in, dims_c=None, parts: tuple[StepPart, ...] = SRFLOW_STEP,
                 **options):
        check_conditions(self, check_image_input(self, dims_in, min_channels=2), dims_c)
        super().__init__(dims_in, dims_c, parts, **options)


class TransitionStep(FlowStep):
    """ActNorm -> InvConv1x1 (submodules `actnorm`, `invconv`), no condition."""

    def __init__(self, dims_in, dims_c=None, parameterization: str = "lu"):
        check_no_condition(self, dims_c)
        super().__init__(dims_in, None, TRANSITION_STEP, parameterization=parameterization)
