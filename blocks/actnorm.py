"""Activation normalisation (Glow): a per-channel affine map with data-dependent init.

    forward:  z = (x + bias) * exp(logs)
    reverse:  x = z * exp(-logs) - bias
    log-det:  H * W * sum(logs)            (per sample)

`bias` and `logs` have shape [1, C, 1, 1], as in the SRFlow reference code's ActNorm2d.
On the first forward (data -> latent) call they are set from that batch so the output
has zero mean and unit variance per channel:

    bias = -mean(x),  logs = -log(std(x) + 1e-6)     (over batch, height and width)

Reverse calls never initialise (before initialisation they use the current parameters,
the identity at construction). Whether the layer is initialised is the boolean buffer
`initialized`, saved in the state dict, so a loaded model is never re-initialised; a
state dict that has `bias`/`logs` but no `initialized` entry (the reference code's files)
loads as initialised. Under `torch.distributed` the batch statistics are averaged over
all ranks, so every rank starts from the same parameters.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from FrEIA.modules import InvertibleModule
from torch import Tensor, nn

from .shapes import check_image_input, check_no_condition

ACTNORM_EPS = 1e-6


def _average_over_ranks(value: Tensor) -> Tensor:
    """Mean of `value` over all torch.distributed ranks (itself when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def actnorm_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """(bias, logs) of shape [1, C, 1, 1] that normalise `x` [B, C, H, W] per channel.

    The mean and then the second moment around it are each averaged over ranks, which
    gives the statistics of the union of all ranks' batches when they are equally large.
    """
    with torch.no_grad():
        mean = _average_over_ranks(x.mean(dim=(0, 2, 3), keepdim=True))
        variance = _average_over_ranks(((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True))
        logs = -torch.log(variance.sqrt() + ACTNORM_EPS)
    return -mean, logs


class _ActNormState:
    """The parameters, init rule and state-dict handling shared by both ActNorm classes."""

    bias: nn.Parameter
    logs: nn.Parameter
    initialized: Tensor

    def _setup_actnorm(self, channels: int) -> None:
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized_flag = False

    @property
    def is_initialized(self) -> bool:
        return self._initialized_flag

    def initialize_from(self, x: Tensor) -> None:
        """Set bias and logs from the batch `x` (whatever the current state)."""
        bias, logs = actnorm_statistics(x)
        with torch.no_grad():
            self.bias.copy_(bias)
            self.logs.copy_(logs)
            self.initialized.fill_(True)
        self._initialized_flag = True

    def _normalize(self, x: Tensor, rev: bool, allow_init: bool) -> Tensor:
        if allow_init and not rev and not self._initialized_flag:
            self.initialize_from(x)
        if rev:
            return x * torch.exp(-self.logs) - self.bias
        return (x + self.bias) * torch.exp(self.logs)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        key = prefix + "initialized"
        if key not in state_dict and prefix + "bias" in state_dict:
            state_dict[key] = torch.tensor(True)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
        self._initialized_flag = bool(self.initialized)


class ActNormLayer(_ActNormState, nn.Module):
    """ActNorm as a plain layer (no log-det), used after the subnet convolutions.

    `forward(x, allow_init=True)`: pass `allow_init=False` when the surrounding flow runs
    in reverse, so that only data -> latent calls initialise.
    """

    def __init__(self, channels: int):
        super().__init__()
        self._setup_actnorm(channels)

    def forward(self, x: Tensor, allow_init: bool = True) -> Tensor:
        return self._normalize(x, rev=False, allow_init=allow_init)


class ActNorm(_ActNormState, InvertibleModule):
    """FrEIA ActNorm with the init rule above (FrEIA 0.2's own ActNorm also inits in reverse)."""

    def __init__(self, dims_in, dims_c=None):
        super().__init__(dims_in, dims_c)
        check_no_condition(self, dims_c)
        channels, _, _ = check_image_input(self, dims_in)
        self._setup_actnorm(channels)

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        x = x_or_z[0]
        out = self._normalize(x, rev=rev, allow_init=True)
        logdet = self.logs.sum() * (x.shape[2] * x.shape[3])
        logdet = logdet.expand(x.shape[0])
        return (out,), (-logdet if rev else logdet)

    def output_dims(self, input_dims):
        return list(input_dims)
