"""The subnetwork F(c_in, c_out) of the affine blocks (SRFlow paper, section 3.2).

    [0] 3x3 conv c_in -> hidden, no bias, weights ~ N(0, 0.05), then ActNorm
    [1] ReLU
    [2] 1x1 conv hidden -> hidden, no bias, weights ~ N(0, 0.05), then ActNorm
    [3] ReLU
    [4] 3x3 conv hidden -> c_out, weight and bias zero, output * exp(3 * logs)

Indices and parameter names follow the reference code (`N.weight`, `N.actnorm.bias`,
`N.actnorm.logs`, `4.weight`, `4.bias`, `4.logs`), so its weights map one to one. All
convolutions pad to keep the spatial size. The zero-initialised last layer makes a block
that uses this subnet start as a fixed (condition-independent) map.

Once an ActNorm is initialised it is folded into the conv before it (conv(x, W * e) +
b * e with e = exp(logs)), and the last layer's scale into its weights, so a subnet is
three convolutions with biases and two ReLUs: the same function and gradients, without
the extra passes over the [B, hidden, H, W] activations.

The affine blocks take any subnet (FrEIA's `subnet_constructor(c_in, c_out)`). A subnet
that also implements `SplittableSubnet` (as `Subnet` does) lets them compute the
condition's share of its first layer once per condition instead of once per sample; one
that implements `UpsampledInputSubnet` (as `Subnet` does) also computes it at the low
resolution for condition channels that are a nearest upsampling (`upsampled.py`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .actnorm import ActNormLayer
from .upsampled import conv_over_upsampled, split_source

CONV_WEIGHT_STD = 0.05
LOGSCALE_FACTOR = 3.0


class ConvActNorm(nn.Conv2d):
    """Conv without bias followed by an ActNorm (`.actnorm`), as the reference's Conv2d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                         bias=False)
        nn.init.normal_(self.weight, mean=0.0, std=CONV_WEIGHT_STD)
        self.actnorm = ActNormLayer(out_channels)

    def forward(self, x: Tensor, allow_init: bool = True) -> Tensor:
        if self.actnorm.is_initialized:
            weight, bias = self.folded()
            return F.conv2d(x, weight, bias, padding=self.padding)
        return self.actnorm(self.linear_part(x), allow_init=allow_init)

    def folded(self) -> tuple[Tensor, Tensor]:
        """(W * e, b * e) with e = exp(logs) of the initialised ActNorm: ActNorm(conv(x, W))
        = (conv(x, W) + b) * e = conv(x, W * e) + b * e, one convolution with a bias in
        place of two extra passes over its output (the same function and gradients)."""
        scale = torch.exp(self.actnorm.logs).flatten()
        return self.weight * scale[:, None, None, None], self.actnorm.bias.flatten() * scale

    def linear_part(self, x: Tensor) -> Tensor:
        """The bias-free convolution alone (linear in x, so it splits over input channels)."""
        return F.conv2d(x, self.weight, padding=self.padding)


class ZeroConv2d(nn.Conv2d):
    """Zero-initialised conv whose output is scaled by exp(3 * logs), logs of shape [C, 1, 1]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)
        self.logs = nn.Parameter(torch.zeros(out_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """(conv(x, W) + bias) * s = conv(x, W * s) + bias * s with s = exp(3 * logs)."""
        scale = torch.exp(self.logs * LOGSCALE_FACTOR).flatten()
        return F.conv2d(x, self.weight * scale[:, None, None, None], self.bias * scale,
                        padding=self.padding)


@runtime_checkable
class SplittableSubnet(Protocol):
    """A subnet whose first layer is linear in its input channels, plus a bias.

    For an input cat[a, b] along the channels (a with k channels),

        subnet(x) == finish(first_layer(a, 0) + first_layer(b, k, bias=True))

    `first_layer(x, start, bias)` is the first layer's response to input channels
    start .. start + x.shape[1] alone (with the layer's bias when `bias`); `finish` runs the
    rest of the subnet. `allow_init=False` is passed in the latent -> data direction, so
    data-dependent initialisations (ActNorm) happen only on data -> latent passes.
    """

    def __call__(self, x: Tensor, allow_init: bool = True) -> Tensor: ...

    def first_layer(self, x: Tensor, start: int, bias: bool = False) -> Tensor: ...

    def finish(self, h: Tensor, allow_init: bool = True) -> Tensor: ...


@runtime_checkable
class UpsampledInputSubnet(SplittableSubnet, Protocol):
    """A `SplittableSubnet` that takes input channels given as their low-resolution source:
    `first_layer_upsampled(low, start, factor, bias)` equals
    `first_layer(nearest_factor(low), start, bias)`, and `subnet(x, upsampled=(s, f))`
    computes its first layer so where x's channels from s on are a nearest upsampling."""

    def __call__(self, x: Tensor, allow_init: bool = True,
                 upsampled: tuple[int, int] | None = None) -> Tensor: ...

    def first_layer_upsampled(self, low: Tensor, start: int, factor: int,
                              bias: bool = False) -> Tensor: ...


def first_layer_term(net: SplittableSubnet, u: Tensor, start: int,
                     upsampled: tuple[int, int] | None = None) -> Tensor:
    """`net.first_layer(u, start, bias=True)`; u's channels from upsampled[0] on are taken at
    their low resolution (`upsampled.split_source`) where they are a nearest upsampling by
    upsampled[1] and `net` is an `UpsampledInputSubnet`."""
    parts = None
    if upsampled is not None and isinstance(net, UpsampledInputSubnet):
        parts = split_source(u, *upsampled)
    if parts is None:
        return net.first_layer(u, start, bias=True)
    (split, factor), (head, low) = upsampled, parts
    term = net.first_layer_upsampled(low, start + split, factor, bias=True)
    return term + net.first_layer(head, start) if split else term


class Subnet(nn.Sequential):
    """nn.Sequential of the layers above, a `SplittableSubnet`.

    `forward(x, allow_init=True, upsampled=None)`; the affine blocks pass `allow_init=False`
    in reverse so the inner ActNorms initialise only from data -> latent passes, and
    `upsampled=(start, factor)` for channels that are usually a nearest upsampling.
    """

    def forward(self, x: Tensor, allow_init: bool = True,
                upsampled: tuple[int, int] | None = None) -> Tensor:
        return self.finish(first_layer_term(self, x, 0, upsampled), allow_init)

    def first_layer(self, x: Tensor, start: int, bias: bool = False) -> Tensor:
        """Layer 0 on input channels start .. start + C of x: its folded conv (with the folded
        bias when `bias`) once the ActNorm is initialised, else the bias-free conv alone."""
        weight, layer_bias = self._first_weight(start, start + x.shape[1])
        return F.conv2d(x, weight, layer_bias if bias else None, padding=self[0].padding)

    def first_layer_upsampled(self, low: Tensor, start: int, factor: int,
                              bias: bool = False) -> Tensor:
        """`first_layer` of nearest_factor(low), computed at low's resolution."""
        weight, layer_bias = self._first_weight(start, start + low.shape[1])
        return conv_over_upsampled(low, weight, layer_bias if bias else None, factor,
                                   self[0].padding[0])

    def _first_weight(self, start: int, stop: int) -> tuple[Tensor, Tensor | None]:
        """Layer 0's weights for input channels start .. stop and its bias: folded once its
        ActNorm is initialised, else the raw weights and no bias."""
        first = self[0]
        if not first.actnorm.is_initialized:
            return first.weight[:, start:stop], None
        weight, folded_bias = first.folded()
        return weight[:, start:stop], folded_bias

    def finish(self, h: Tensor, allow_init: bool = True) -> Tensor:
        """The subnet's output given the summed `first_layer` terms `h` (layer 0's ActNorm
        is applied here while it is not yet initialised)."""
        if not self[0].actnorm.is_initialized:
            h = self[0].actnorm(h, allow_init=allow_init)
        for layer in list(self)[1:]:
            h = layer(h, allow_init=allow_init) if isinstance(layer, ConvActNorm) else layer(h)
        return h


def subnet(c_in: int, c_out: int, hidden: int = 64) -> Subnet:
    """F(c_in, c_out) with the reference's layer indices (see module docstring)."""
    return Subnet(
        ConvActNorm(c_in, hidden, kernel_size=3),
        nn.ReLU(),
        ConvActNorm(hidden, hidden, kernel_size=1),
        nn.ReLU(),
        ZeroConv2d(hidden, c_out, kernel_size=3),
    )
