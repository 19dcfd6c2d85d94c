"""Condition-only work kept across calls: the terms of the affine blocks that depend on the
condition alone, computed once per condition tensor while a cache is active.

Sampling many images from one condition (more samples, another temperature, a re-drawn
region) runs the same condition-only convolutions every time: the affine injector's whole
subnet and the first-layer condition convolution of each coupling. Inside `cache.active(flow)`
each block looks its term up by the identity of the condition tensor it is given and
computes it only on a miss:

    cache = ConditionCache()
    with torch.no_grad(), cache.active(flow):
        first = flow(z1, c=cond, rev=True)     # computes and keeps the terms
        again = flow(z2, c=cond, rev=True)     # reuses them

The result equals the uncached one (to float rounding: the coupling then always takes its
split first-layer path). The terms are only valid for the weights they were computed with:
use a cache for inference, and a new one after the weights change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn


class ConditionCache:
    """Per-block condition terms, keyed by the block and the condition tensor's identity."""

    def __init__(self) -> None:
        self._terms: dict[int, tuple[Tensor, object]] = {}

    def lookup(self, block: nn.Module, u: Tensor, compute: Callable[[Tensor], object]) -> object:
        """The block's term for condition `u`: the kept one when `u` is the same tensor."""
        kept = self._terms.get(id(block))
        if kept is not None and kept[0] is u:
            return kept[1]
        term = compute(u)
        self._terms[id(block)] = (u, term)
        return term

    def __len__(self) -> int:
        return len(self._terms)

    @contextmanager
    def active(self, module: nn.Module) -> Iterator[ConditionCache]:
        """Make every block of `module` that supports it use this cache until the end."""
        blocks = [m for m in module.modules() if hasattr(m, "condition_cache")]
        for block in blocks:
            block.condition_cache = self
        try:
            yield self
        finally:
            for block in blocks:
                block.condition_cache = None


def condition_term(block: nn.Module, u: Tensor, compute: Callable[[Tensor], object]) -> object:
    """`compute(u)`, or the active cache's kept value for this block and `u`."""
    cache = block.condition_cache
    return compute(u) if cache is None else cache.lookup(block, u, compute)
