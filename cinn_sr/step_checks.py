"""Finite checks of a training step, and where a non-finite step came from."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def first_nonfinite(named: list[tuple[str, Tensor | None]]) -> str | None:
    """Name of the first tensor with a NaN or inf (None entries are skipped)."""
    for name, t in named:
        if t is not None and not torch.isfinite(t).all():
            return name
    return None


def gradients_finite(params: list[nn.Parameter]) -> bool:
    """Whether every gradient is finite (one device synchronisation for all of them)."""
    norms = [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]
    return not norms or bool(torch.isfinite(torch.stack(norms)).all())


def nonfinite_state(model: nn.Module) -> str | None:
    """The first parameter or floating-point buffer of `model` holding a NaN or inf."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return first_nonfinite([(n, t) for n, t in tensors if t.is_floating_point()])


def _floats(output) -> list[Tensor]:
    """The floating-point tensors of a module's output (a tensor or nested tuples/lists)."""
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _floats(item)]
    return [output] if isinstance(output, Tensor) and output.is_floating_point() else []


def locate_nonfinite_output(model: nn.Module, objective: nn.Module, hr: Tensor, lr: Tensor) -> str:
    """The first module (in call order) whose output holds a NaN or inf for this batch."""
    found: list[str] = []

    def hook(name: str):
        def check(_module, _inputs, output) -> None:
            if not found and any(not torch.isfinite(t).all() for t in _floats(output)):
                found.append(name)
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            objective(hr, lr)
    finally:
        for h in handles:
            h.remove()
    return f"output of {found[0]}" if found else "loss"


def diagnose_step(
    model: nn.Module, objective: nn.Module, hr: Tensor, lr: Tensor, loss_finite: bool
) -> str:
    """Where a non-finite step came from: input, a weight, a gradient or a layer's output."""
    if not (torch.isfinite(hr).all() and torch.isfinite(lr).all()):
        return "input batch"
    named = list(model.named_parameters())
    where = first_nonfinite([(f"weight {n}", p) for n, p in named])
    if where:
        return where
    if loss_finite:
        return first_nonfinite([(f"gradient of {n}", p.grad) for n, p in named]) or "gradient"
    return locate_nonfinite_output(model, objective, hr, lr)
