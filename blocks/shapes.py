"""Construction-time shape checks shared by the blocks (one clear ValueError per mistake)."""

from __future__ import annotations

from torch import Tensor


def _name(module) -> str:
    return type(module).__name__


def check_image_input(module, dims_in, min_channels: int = 1) -> tuple[int, int, int]:
    """The single (C, H, W) input shape of `module`, or a ValueError naming the block."""
    dims_in = list(dims_in)
    if len(dims_in) != 1 or len(tuple(dims_in[0])) != 3:
        raise ValueError(f"{_name(module)}: expected one input of shape (C, H, W), "
                         f"got {[tuple(d) for d in dims_in]}")
    channels, height, width = (int(v) for v in dims_in[0])
    if channels < min_channels:
        raise ValueError(f"{_name(module)}: expected an input with at least {min_channels} "
                         f"channels, got shape {(channels, height, width)}")
    return channels, height, width


def check_no_condition(module, dims_c) -> None:
    if dims_c:
        raise ValueError(f"{_name(module)}: takes no condition, "
                         f"got condition shapes {[tuple(d) for d in dims_c]}")


def check_conditions(module, input_shape: tuple[int, int, int], dims_c) -> int:
    """Total channels of the conditions, each of which must be (C_c, H, W) like the input."""
    dims_c = [tuple(int(v) for v in d) for d in (dims_c or [])]
    if not dims_c:
        raise ValueError(f"{_name(module)}: needs a condition of shape (C_c, "
                         f"{input_shape[1]}, {input_shape[2]}), got none")
    for shape in dims_c:
        if len(shape) != 3 or shape[1:] != tuple(input_shape[1:]):
            raise ValueError(f"{_name(module)}: condition shape must be (C_c, {input_shape[1]}, "
                             f"{input_shape[2]}) to match input {tuple(input_shape)}, "
                             f"got {shape}")
    return sum(shape[0] for shape in dims_c)


def samples_per_condition(module, x: Tensor, condition: Tensor) -> int:
    """n such that input i uses condition i // n (input batch = n * condition batch)."""
    n_inputs, n_conditions = x.shape[0], condition.shape[0]
    if n_conditions == 0 or n_inputs % n_conditions:
        raise ValueError(f"{_name(module)}: input batch {n_inputs} is not a multiple of "
                         f"condition batch {n_conditions}")
    if condition.shape[2:] != x.shape[2:]:
        raise ValueError(f"{_name(module)}: condition spatial size {tuple(condition.shape[2:])} "
                         f"differs from input spatial size {tuple(x.shape[2:])}")
    return n_inputs // n_conditions
