"""Split with a learned Gaussian prior on the emitted half (SRFlow paper, section 3.3; the
reference code (andreas128/SRFlow) calls it Split2d).

    forward:  x -> (z1, eps) with z1 = x[:, :C//2] (kept), z2 = x[:, C//2:] (emitted),
              (mean, logstd) = cross split of conv(z1), eps = (z2 - mean) / exp(logstd)
    reverse:  z2 = eps * exp(logstd) + mean  (eps = 0 gives the prior mean)
    log-det:  -sum(logstd)

The standardised output eps is standard normal under the model, so every latent of a
multi-scale flow gets the same N(0, I) prior. In FrEIA terms this is a one-sided affine
coupling of z2 on z1 followed by a split. Submodule `conv` is the zero-initialised conv
C//2 -> 2 (C - C//2) (`.weight`, `.bias`, `.logs`), so the prior starts as N(0, I).
"""

from __future__ import annotations

import torch
from FrEIA.modules import InvertibleModule

from .shapes import check_image_input, check_no_condition
from .subnet import ZeroConv2d


class PriorSplit(InvertibleModule):
    """One input (C, H, W), two outputs: kept (C//2, H, W) and eps (C - C//2, H, W)."""

    def __init__(self, dims_in, dims_c=None):
        super().__init__(dims_in, dims_c)
        check_no_condition(self, dims_c)
        channels, _, _ = check_image_input(self, dims_in, min_channels=2)
        self.kept_channels = channels // 2
        self.conv = ZeroConv2d(self.kept_channels, 2 * (channels - self.kept_channels))

    def _prior(self, kept):
        h = self.conv(kept)
        return h[:, 0::2], h[:, 1::2]

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        if rev:
            kept, eps = x_or_z
            mean, logstd = self._prior(kept)
            out = (torch.cat([kept, eps * torch.exp(logstd) + mean], dim=1),)
            return out, logstd.sum(dim=(1, 2, 3))
        x = x_or_z[0]
        kept, emitted = x[:, : self.kept_channels], x[:, self.kept_channels:]
        mean, logstd = self._prior(kept)
        eps = (emitted - mean) * torch.exp(-logstd)
        return (kept, eps), -logstd.sum(dim=(1, 2, 3))

    def output_dims(self, input_dims):
        channels, height, width = input_dims[0]
        kept = channels // 2
        return [(kept, height, width), (channels - kept, height, width)]
