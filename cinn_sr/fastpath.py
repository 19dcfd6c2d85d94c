"""Optional speed-ups of an `SRFlow` model that leave its results unchanged.

- `compile_flow(model)`: the flow (FrEIA GraphINN) runs through `torch.compile`. The
  ActNorm layers initialise from data in eager mode, so the model must be initialised (or
  loaded) first. When compilation fails (no C++ compiler, an unsupported platform or op),
  a RuntimeWarning says so and the flow runs eagerly from then on. The state dict and the
  model API are unchanged (the compiled callable replaces `model.flow.forward` on that one
  instance), so checkpoints saved from a compiled model load anywhere.
- `fast_encoder(model, channels_last=True, bf16=True)`: the RRDB encoder runs in the
  channels-last memory format and/or under bfloat16 autocast; its conditions come back as
  contiguous float32 tensors, so the flow (whose log-determinants need the precision)
  stays float32. Meant for CUDA (tensor cores); on CPU bfloat16 is usually slower and
  channels-last gains little.

The always-on fast path lives in the model itself: LU 1x1 convolutions (log-det = sum of
log|s|, inverse by triangular solves), the encoder run once per LR and every
condition-only term of the flow computed once per condition (condition broadcasting),
no HR-resolution ESRGAN tail, and sampling under `torch.inference_mode`.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch import Tensor

from cinn_sr.model import SRFlow

__all__ = ["compile_flow", "fast_encoder", "is_flow_compiled"]


def _compile_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "compilation failed" (not an error of the computation)."""
    errors: list[type[BaseException]] = []
    with contextlib.suppress(ImportError):
        from torch._dynamo.exc import TorchDynamoException

        errors.append(TorchDynamoException)
    with contextlib.suppress(ImportError):
        from torch._inductor import exc as inductor_exc

        errors += [getattr(inductor_exc, name) for name in ("CppCompileError",
                                                             "InvalidCxxCompiler")
                   if hasattr(inductor_exc, name)]
    return tuple(errors)


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}"


def is_flow_compiled(model: SRFlow) -> bool:
    """Whether `model.flow` currently runs through torch.compile."""
    return getattr(model.flow.forward, "_cinn_sr_compiled", False)


def compile_flow(model: SRFlow, **compile_options) -> bool:
    """Run `model.flow` through `torch.compile(**compile_options)`; False if that is unavailable.

    Compilation happens on the first call for each new input shape; if it fails there, a
    RuntimeWarning names the error and the flow falls back to eager for good. Raises
    RuntimeError for a model whose ActNorm layers are not initialised (their data-dependent
    initialisation has to run eagerly: call `model.initialize(lr, hr)`, train or load first).
    """
    if not model.is_initialized:
        raise RuntimeError("compile_flow: initialise the model's ActNorm layers first "
                           "(model.initialize(lr, hr), train, or load a checkpoint)")
    if is_flow_compiled(model):
        return True
    flow = model.flow
    eager_forward = flow.forward
    try:
        compiled_forward = torch.compile(eager_forward, **compile_options)
    except Exception as error:  # e.g. torch.compile unsupported on this Python
        warnings.warn(f"torch.compile is unavailable ({_first_line(error)}); the flow runs "
                      "eagerly", RuntimeWarning, stacklevel=2)
        return False
    errors = _compile_errors()

    @functools.wraps(eager_forward)
    def forward(*args, **kwargs):
        try:
            return compiled_forward(*args, **kwargs)
        except errors as error:
            warnings.warn(f"torch.compile of the flow failed ({_first_line(error)}); the flow "
                          "runs eagerly from now on", RuntimeWarning, stacklevel=2)
            del flow.forward
            return eager_forward(*args, **kwargs)

    forward._cinn_sr_compiled = True
    flow.forward = forward
    return True


def fast_encoder(model: SRFlow, channels_last: bool = True, bf16: bool = True) -> None:
    """Run `model.encoder` channels-last and/or under bfloat16 autocast (see module doc).

    The conditions it returns are contiguous float32 whatever the options, so the flow
    is unaffected. Weights keep their values (and state-dict keys).
    """
    encoder = model.encoder
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
    plain_forward = type(encoder).forward.__get__(encoder)

    @functools.wraps(plain_forward)
    def forward(lr: Tensor) -> list[Tensor]:
        if channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(lr.device.type, dtype=torch.bfloat16) if bf16
                    else contextlib.nullcontext())
        with autocast:
            conditions = plain_forward(lr)
        return [c.float().contiguous() for c in conditions]

    encoder.forward = forward

