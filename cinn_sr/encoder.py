"""The conditioning encoder g: ESRGAN's RRDB network returning SRFlow's per-level features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cinn_sr.presets import SRFlowConfig


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; out = x + 0.2 * conv5(cat[x, x1, ..., x4])."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        for i in range(1, 5):
            setattr(self, f"conv{i}", nn.Conv2d(nf + (i - 1) * gc, gc, 3, 1, 1))
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
                m.weight.data.mul_(0.1)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), 0.2))
        return self.conv5(torch.cat(features, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: x + 0.2 * RDB3(RDB2(RDB1(x)))."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.RDB1 = ResidualDenseBlock(nf, gc)
        self.RDB2 = ResidualDenseBlock(nf, gc)
        self.RDB3 = ResidualDenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class RRDBEncoder(nn.Module):
    """ESRGAN's RRDBNet (no batch norm) with the reference's parameter names.

    `forward(lr)` returns one condition per flow level, HR side first: at a level whose
    resolution is f times the LR's, the base feature is the x f output of ESRGAN's
    upsampling path (nearest x2, 3x3 conv, LeakyReLU 0.2) for f >= 2, the LR trunk feature
    for f = 1, and a bilinear x f resize of the LR trunk feature for f < 1. The upsampled
    features are taken after the LeakyReLU, as in the reference code (andreas128/SRFlow),
    whose in-place activation overwrites the features it stores. The stacked trunk block
    outputs, nearest-resized to the level's resolution, follow the base feature along
    channels. Only the upsampling convs the levels need are run. `sr(lr)` is the full
    ESRGAN output (through `HRconv` and `conv_last`), used for L1 pre-training only.

    With `checkpoint_trunk` set, each RRDB block of the trunk is a gradient-checkpointed
    segment while grad is enabled (its activations are recomputed in the backward pass), so
    only the blocks' outputs are stored.
    """

    def __init__(self, config: SRFlowConfig) -> None:
        super().__init__()
        self.config = config
        nf, gc = config.nf, config.gc
        self.conv_first = nn.Conv2d(config.in_channels, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*[RRDB(nf, gc) for _ in range(config.n_rrdb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        for i in range(1, config.n_up + 1):
            setattr(self, f"upconv{i}", nn.Conv2d(nf, nf, 3, 1, 1))
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, config.in_channels, 3, 1, 1)
        self.checkpoint_trunk = False

    def _trunk(self, lr: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The LR feature `skip + trunk_conv(fea)` (fea: last block output; skip: fea, or the
        conv_first output with rrdb_skip="input") and the stacked trunk block outputs."""
        first = fea = self.conv_first(lr)
        block_outputs = {}
        checkpointed = self.checkpoint_trunk and torch.is_grad_enabled()
        for idx, block in enumerate(self.RRDB_trunk):
            fea = checkpoint(block, fea, use_reentrant=False) if checkpointed else block(fea)
            if idx in self.config.stack_blocks:
                block_outputs[idx] = fea
        stacked = [block_outputs[idx] for idx in self.config.stack_blocks]
        skip = first if self.config.rrdb_skip == "input" else fea
        return skip + self.trunk_conv(fea), stacked

    def _upsample(self, lr_feature: torch.Tensor, n: int) -> list[torch.Tensor]:
        """leaky_relu(upconv_i(nearest_x2(previous))) for i = 1..n."""
        outs, fea = [], lr_feature
        for i in range(1, n + 1):
            up = F.interpolate(fea, scale_factor=2, mode="nearest")
            fea = F.leaky_relu(getattr(self, f"upconv{i}")(up), 0.2)
            outs.append(fea)
        return outs

    def forward(self, lr: torch.Tensor) -> list[torch.Tensor]:
        """Per-level conditions [B, cond_channels, H_l, W_l], level 1 (HR side) first."""
        lr_feature, stacked = self._trunk(lr)
        factors = self.config.level_factors
        ups = self._upsample(lr_feature, int(math.log2(max(factors[0], 1))))
        stack = torch.cat(stacked, 1) if stacked else None
        conditions = []
        for f in factors:
            if f >= 2:
                base = ups[int(math.log2(f)) - 1]
            elif f == 1:
                base = lr_feature
            else:
                base = F.interpolate(
                    lr_feature, scale_factor=f, mode="bilinear", align_corners=False,
                    recompute_scale_factor=True,
                )
            if stack is not None:
                base = torch.cat([base, F.interpolate(stack, size=base.shape[2:])], 1)
            conditions.append(base)
        return conditions

    def sr(self, lr: torch.Tensor) -> torch.Tensor:
        """ESRGAN's SR output (the RRDB pre-training target path, L1 loss)."""
        lr_feature, _ = self._trunk(lr)
        fea = self._upsample(lr_feature, self.config.n_up)[-1]
        return self.conv_last(F.leaky_relu(self.HRconv(fea), 0.2))
