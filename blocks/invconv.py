"""Learned invertible 1x1 convolution (Glow).

    forward:  z = W x            (a 1x1 conv with the C x C matrix W)
    reverse:  x = W^-1 z
    log-det:  H * W * log|det W|  (per sample)

W starts as a random rotation (Q of the QR decomposition of a Gaussian matrix).
Two parameterisations:

- "full": the parameter `weight` is W itself, as in the SRFlow reference code; the
  log-det uses slogdet and the reverse pass inverts W in float64.
- "lu" (Glow): W = P L (U + diag(sign_s * exp(log_s))) with a fixed permutation P
  (buffer `permutation`), a unit lower-triangular L, a strictly upper-triangular U and
  fixed signs (buffer `sign_s`). L, U and log_s are packed into one C x C parameter `lu`
  (strict lower triangle = L, strict upper triangle = U, diagonal = log_s), so the layer
  has C^2 trainable values like the full matrix. log|det W| = sum(log_s), and the
  inverse comes from triangular solves: no determinant or general inverse needed.

Both expose `weight_matrix()` and `set_weight_matrix(W)`, the latter exact (to float
precision) in both parameterisations, e.g. to load a reference code's full matrix into LU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from FrEIA.modules import InvertibleModule
from torch import Tensor, nn

from .shapes import check_image_input, check_no_condition

PARAMETERIZATIONS = ("lu", "full")


def random_rotation(channels: int) -> Tensor:
    """A random orthogonal matrix: Q of the QR decomposition of a standard Gaussian matrix."""
    q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
    return q.float()


class InvConv1x1(InvertibleModule):
    """Invertible 1x1 convolution with a full or LU-parameterised matrix (see module doc)."""

    def __init__(self, dims_in, dims_c=None, parameterization: str = "lu"):
        super().__init__(dims_in, dims_c)
        check_no_condition(self, dims_c)
        channels, _, _ = check_image_input(self, dims_in)
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"InvConv1x1: parameterization must be one of {PARAMETERIZATIONS}, "
                             f"got {parameterization!r}")
        self.parameterization = parameterization
        self.channels = channels
        if parameterization == "full":
            self.weight = nn.Parameter(torch.eye(channels))
        else:
            self.register_buffer("permutation", torch.eye(channels))
            self.register_buffer("sign_s", torch.ones(channels))
            self.lu = nn.Parameter(torch.zeros(channels, channels))
        self.set_weight_matrix(random_rotation(channels))

    def _lu_factors(self) -> tuple[Tensor, Tensor]:
        """(L, U') with unit-diagonal L and U' = U + diag(sign_s * exp(log_s))."""
        eye = torch.eye(self.channels, dtype=self.lu.dtype, device=self.lu.device)
        lower = torch.tril(self.lu, -1) + eye
        log_s = torch.diagonal(self.lu)
        upper = torch.triu(self.lu, 1) + torch.diag(self.sign_s * torch.exp(log_s))
        return lower, upper

    def weight_matrix(self) -> Tensor:
        """The C x C matrix W of the forward map z = W x."""
        if self.parameterization == "full":
            return self.weight
        lower, upper = self._lu_factors()
        return self.permutation @ lower @ upper

    def inverse_matrix(self) -> Tensor:
        """W^-1, computed in float64 and returned in the parameters' dtype."""
        if self.parameterization == "full":
            return torch.linalg.inv(self.weight.double()).to(self.weight.dtype)
        lower, upper = self._lu_factors()
        eye = torch.eye(self.channels, dtype=torch.float64, device=lower.device)
        lower_inv = torch.linalg.solve_triangular(lower.double(), eye, upper=False,
                                                  unitriangular=True)
        upper_inv = torch.linalg.solve_triangular(upper.double(), eye, upper=True)
        inverse = upper_inv @ lower_inv @ self.permutation.double().T
        return inverse.to(self.lu.dtype)

    def log_abs_det(self) -> Tensor:
        """log|det W| (per pixel)."""
        if self.parameterization == "full":
            return torch.linalg.slogdet(self.weight)[1]
        return torch.diagonal(self.lu).sum()

    @torch.no_grad()
    def set_weight_matrix(self, matrix: Tensor) -> None:
        """Make the forward map z = `matrix` x (an invertible C x C matrix)."""
        matrix = torch.as_tensor(matrix)
        if matrix.shape != (self.channels, self.channels):
            raise ValueError(f"InvConv1x1: expected a ({self.channels}, {self.channels}) "
                             f"matrix, got {tuple(matrix.shape)}")
        if self.parameterization == "full":
            self.weight.copy_(matrix)
            return
        permutation, lower, upper = torch.linalg.lu(matrix.double().cpu())
        diagonal = torch.diagonal(upper)
        if bool((diagonal == 0).any()):
            raise ValueError("InvConv1x1: the matrix is singular")
        self.permutation.copy_(permutation)
        self.sign_s.copy_(torch.sign(diagonal))
        self.lu.copy_(torch.tril(lower, -1) + torch.triu(upper, 1)
                      + torch.diag(torch.log(diagonal.abs())))

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        x = x_or_z[0]
        matrix = self.inverse_matrix() if rev else self.weight_matrix()
        out = F.conv2d(x, matrix.view(self.channels, self.channels, 1, 1))
        logdet = (self.log_abs_det() * (x.shape[2] * x.shape[3])).expand(x.shape[0])
        return (out,), (-logdet if rev else logdet)

    def output_dims(self, input_dims):
        return list(input_dims)
