"""SRFlow's conditional affine blocks (paper, section 3.2): the affine injector and the coupling.

Both compute h = F(...) with the subnet of `subnet.py`, take the shift from the even
channels and the raw scale s from the odd ones ("cross" split, as the reference code),
and map  x -> (x + shift) * scale(s),  log-det = sum over channels and positions of
log scale(s). The scale function is chosen by name:

- "sigmoid" (default, the paper's and the reference code's): scale = sigmoid(s + 2) + 1e-4.
  About 0.881 at init, bounded by (1e-4, 1 + 1e-4); sampling divides by it, so a
  scale near 1e-4 amplifies the latent, which is where the reference code's NaN /
  black-region samples come from.
- "softclamp": scale = exp(clamp * tanh(s / clamp)), FrEIA's style: the identity at init
  and bounded in [exp(-clamp), exp(clamp)] both ways, the stable choice for sampling at
  high temperature or training from scratch with a large learning rate.

The subnet F is any module built by `subnet_constructor(c_in, c_out)` (FrEIA's convention);
None builds SRFlow's (`subnet.py`, width `hidden`). F's last layer should start at zero
(as SRFlow's and FrEIA's examples do), so a block starts as a condition-independent map.

Condition broadcasting: with a condition batch B and an input batch B * n, input i uses
condition i // n. Work that depends on the condition alone runs once per condition: the
injector's whole subnet, and, for a subnet that is a `SplittableSubnet`, the coupling's
first-layer response to the condition (a linear layer over cat[x_A, u] is the sum of its
responses to x_A and to u). Other subnets see the condition repeated n times. The result
equals the one with each condition repeated. Across calls, a `ConditionCache`
(`condition_cache.py`) keeps those condition terms for the same condition tensor.

Upsampled conditions: `upsampled=(start, factor)` says the condition's channels from
`start` on are usually a nearest upsampling by `factor`. When they are (checked on every
call: constant on factor x factor blocks), a subnet that is an `UpsampledInputSubnet`
computes its first layer's response to them at the low resolution (`upsampled.py`: 4/9 of
the multiply-adds of a 3x3 conv); the gradient into those channels then collects on each
block's top-left pixel (the block sums, all that a nearest upsampling passes back, are
exact). Otherwise the blocks compute it as without the option. Inside
`upsampled.sharing_sources()` (as `cinn_sr.flow` runs its graph) the blocks reading one
condition tensor check and split it once.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from FrEIA.modules import InvertibleModule
from torch import Tensor, nn

from .condition_cache import condition_term
from .shapes import check_conditions, check_image_input, samples_per_condition
from .subnet import SplittableSubnet, UpsampledInputSubnet, first_layer_term, subnet

SubnetConstructor = Callable[[int, int], nn.Module]

SCALE_FUNCTIONS = ("sigmoid", "softclamp")
SIGMOID_SHIFT = 2.0
SIGMOID_EPS = 1e-4


def affine_scale(raw: Tensor, kind: str = "sigmoid", clamp: float = 2.0) -> tuple[Tensor, Tensor]:
    """(scale, log scale) of the raw subnet output `raw` for the scale function `kind`."""
    if kind == "sigmoid":
        scale = torch.sigmoid(raw + SIGMOID_SHIFT) + SIGMOID_EPS
        return scale, torch.log(scale)
    log_scale = clamp * torch.tanh(raw / clamp)
    return torch.exp(log_scale), log_scale


def _check_scale(module, scale: str, clamp: float) -> None:
    if scale not in SCALE_FUNCTIONS:
        raise ValueError(f"{type(module).__name__}: scale must be one of {SCALE_FUNCTIONS}, "
                         f"got {scale!r}")
    if not clamp > 0:
        raise ValueError(f"{type(module).__name__}: clamp must be positive, got {clamp}")


def _check_upsampled(module, upsampled, condition_channels: int) -> tuple[int, int] | None:
    if upsampled is None:
        return None
    start, factor = upsampled
    if not (0 <= start < condition_channels and factor >= 2):
        raise ValueError(f"{type(module).__name__}: upsampled must be (start, factor) with "
                         f"0 <= start < {condition_channels} and factor >= 2, got {upsampled}")
    return int(start), int(factor)


def _build_subnet(constructor: SubnetConstructor | None, hidden: int, c_in: int,
                  c_out: int) -> nn.Module:
    return (constructor or partial(subnet, hidden=hidden))(c_in, c_out)


def _run_subnet(net: nn.Module, x: Tensor, allow_init: bool,
                upsampled: tuple[int, int] | None = None) -> Tensor:
    """net(x), with `allow_init` for a `SplittableSubnet` and `upsampled` for an
    `UpsampledInputSubnet` (other subnets take x alone)."""
    if upsampled is not None and isinstance(net, UpsampledInputSubnet):
        return net(x, allow_init=allow_init, upsampled=upsampled)
    return net(x, allow_init=allow_init) if isinstance(net, SplittableSubnet) else net(x)


def _concat_conditions(module, c) -> Tensor:
    if not c:
        raise ValueError(f"{type(module).__name__}: needs a condition, got none")
    return c[0] if len(c) == 1 else torch.cat(list(c), dim=1)


def _shift_and_scale_of(block, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(shift, scale, log scale) of the subnet output h: the shift from the even channels,
    the raw scale from the odd ones, through the block's scale function."""
    return (h[:, 0::2], *affine_scale(h[:, 1::2], block.scale_function, block.clamp))


def _per_sample(values: Tensor, n: int) -> Tensor:
    """[B, ...] per-condition values -> [B * n, ...] (input i gets row i // n)."""
    return values if n == 1 else values.repeat_interleave(n, dim=0)


def _apply_affine(x: Tensor, shift: Tensor, scale: Tensor, n: int, rev: bool) -> Tensor:
    """(x + shift) * scale, or its inverse, with shift/scale of batch B and x of batch B * n."""
    x = x.unflatten(0, (shift.shape[0], n))
    shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    out = x / scale - shift if rev else (x + shift) * scale
    return out.flatten(0, 1)


class AffineInjector(InvertibleModule):
    """z = (x + shift(u)) * scale(u) on all channels, with h = F(u) from the condition u only.

    Submodule `subnet` = F(C_u, 2C). Log-det: sum log scale. Reverse: x = z / scale - shift.
    """

    def __init__(self, dims_in, dims_c=None, hidden: int = 64, scale: str = "sigmoid",
                 clamp: float = 2.0, subnet_constructor: SubnetConstructor | None = None,
                 upsampled: tuple[int, int] | None = None):
        super().__init__(dims_in, dims_c)
        shape = check_image_input(self, dims_in)
        condition_channels = check_conditions(self, shape, dims_c)
        _check_scale(self, scale, clamp)
        self.scale_function, self.clamp = scale, float(clamp)
        self.upsampled = _check_upsampled(self, upsampled, condition_channels)
        self.subnet = _build_subnet(subnet_constructor, hidden, condition_channels, 2 * shape[0])
        self.condition_cache = None

    def _shift_and_scale(self, u: Tensor, allow_init: bool) -> tuple[Tensor, Tensor, Tensor]:
        return _shift_and_scale_of(self, _run_subnet(self.subnet, u, allow_init, self.upsampled))

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        x, u = x_or_z[0], _concat_conditions(self, c)
        n = samples_per_condition(self, x, u)
        shift, scale, log_scale = condition_term(
            self, u, lambda u: self._shift_and_scale(u, allow_init=not rev)
        )
        out = _apply_affine(x, shift, scale, n, rev)
        logdet = _per_sample(log_scale.sum(dim=(1, 2, 3)), n)
        return (out,), (-logdet if rev else logdet)

    def output_dims(self, input_dims):
        return list(input_dims)


class ConditionalAffineCoupling(InvertibleModule):
    """One-sided affine coupling: x_A = x[:, :C//2] passes, x_B = (x_B + shift) * scale.

    h = F(cat[x_A, u]) with submodule `subnet` = F(C//2 + C_u, 2 (C - C//2)).
    Log-det: sum log scale. Reverse: x_B = z_B / scale - shift (x_A is unchanged).
    """

    def __init__(self, dims_in, dims_c=None, hidden: int = 64, scale: str = "sigmoid",
                 clamp: float = 2.0, subnet_constructor: SubnetConstructor | None = None,
                 upsampled: tuple[int, int] | None = None):
        super().__init__(dims_in, dims_c)
        shape = check_image_input(self, dims_in, min_channels=2)
        condition_channels = check_conditions(self, shape, dims_c)
        _check_scale(self, scale, clamp)
        self.scale_function, self.clamp = scale, float(clamp)
        self.upsampled = _check_upsampled(self, upsampled, condition_channels)
        self.passive_channels = shape[0] // 2
        active_channels = shape[0] - self.passive_channels
        self.subnet = _build_subnet(subnet_constructor, hidden,
                                    self.passive_channels + condition_channels,
                                    2 * active_channels)
        self.condition_cache = None

    def _condition_part(self, u: Tensor) -> Tensor:
        """The subnet's first-layer response to the condition channels (with its bias)."""
        return first_layer_term(self.subnet, u, self.passive_channels, self.upsampled)

    def _subnet_output(self, x_a: Tensor, u: Tensor, n: int, allow_init: bool) -> Tensor:
        net = self.subnet
        if not isinstance(net, SplittableSubnet):
            return net(torch.cat([x_a, _per_sample(u, n)], dim=1))
        if n == 1 and self.condition_cache is None and self.upsampled is None:
            return _run_subnet(net, torch.cat([x_a, u], dim=1), allow_init)
        h = net.first_layer(x_a, 0)
        h_condition = condition_term(self, u, self._condition_part)
        h = (h.unflatten(0, (u.shape[0], n)) + h_condition.unsqueeze(1)).flatten(0, 1)
        return net.finish(h, allow_init=allow_init)

    def _shift_and_scale(self, x_a: Tensor, u: Tensor, n: int,
                         allow_init: bool) -> tuple[Tensor, Tensor, Tensor]:
        return _shift_and_scale_of(self, self._subnet_output(x_a, u, n, allow_init))

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        x, u = x_or_z[0], _concat_conditions(self, c)
        n = samples_per_condition(self, x, u)
        x_a, x_b = x[:, : self.passive_channels], x[:, self.passive_channels:]
        shift, scale, log_scale = self._shift_and_scale(x_a, u, n, allow_init=not rev)
        out_b = x_b / scale - shift if rev else (x_b + shift) * scale
        logdet = log_scale.sum(dim=(1, 2, 3))
        return (torch.cat([x_a, out_b], dim=1),), (-logdet if rev else logdet)

    def reconstruct_for_backward(self, z_or_y, c=None):
        """For memory-saving backprop (`memory_saving.py`): the input x of the output z as
        leaves that require grad, x_A and x_B, and the forward's output and log-det on them
        with grad, from one evaluation of the subnet (the inverse's, which reads x_A = z_A):
        ([[x_A, x_B]], (z,), log-det)."""
        z, u = z_or_y[0], _concat_conditions(self, c)
        n = samples_per_condition(self, z, u)
        x_a = z[:, : self.passive_channels].detach().requires_grad_()
        shift, scale, log_scale = self._shift_and_scale(x_a, u, n, allow_init=False)
        with torch.no_grad():
            x_b = z[:, self.passive_channels:] / scale - shift
        x_b.requires_grad_()
        out = torch.cat([x_a, (x_b + shift) * scale], dim=1)
        return [[x_a, x_b]], (out,), log_scale.sum(dim=(1, 2, 3))

    def output_dims(self, input_dims):
        return list(input_dims)
