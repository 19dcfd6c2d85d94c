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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .actnorm import ActNormLayer

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


class Subnet(nn.Sequential):
    """nn.Sequential with an `allow_init` switch for its ActNorms and access after layer 0's conv.

    `forward(x, allow_init=True)`; the affine blocks pass `allow_init=False` in reverse so
    the inner ActNorms initialise only from data -> latent passes.
    """

    def forward(self, x: Tensor, allow_init: bool = True) -> Tensor:
        return self.after_first_conv(self[0].linear_part(x), allow_init)

    def after_first_conv(self, h: Tensor, allow_init: bool = True) -> Tensor:
        """The subnet's output given the output `h` of layer 0's (bias-free) convolution."""
        return self.after_first_layer(self[0].actnorm(h, allow_init=allow_init), allow_init)

    def after_first_layer(self, h: Tensor, allow_init: bool = True) -> Tensor:
        """The subnet's output given the output `h` of layer 0 (conv and ActNorm)."""
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
