"""Memory-saving backprop through a FrEIA GraphINN: node activations are recomputed, not stored.

`MemorySavingFlow(graph)(x_or_z, c=conditions)` returns what `graph(x_or_z, c=conditions)`
returns (the forward direction: outputs and log-det) with the same gradients, but keeps none
of the nodes' activations for the backward pass (the i-RevNet / memcnn idea):

The runner steps through units: the graph's nodes, with each `FlowStep` node taken part by
part (ActNorm, 1x1 conv, injector, coupling: a unit each).

- forward: the units run in order under no_grad; only the graph outputs are kept (and the
  inputs of the units on the `keep` list, below).
- backward: the units are walked in reverse. Each unit's input is reconstructed from its
  output with `module(out, c, rev=True)`, the unit's forward is re-run on it with grad, and
  `torch.autograd.grad` gives the gradients w.r.t. its input, its conditions and its
  parameters from those of its outputs and of the log-det. At any time the activations of
  one unit are held, whatever the depth of the graph. A block with
  `reconstruct_for_backward` (the affine coupling) does both from one evaluation of its
  subnet: the inverse's subnet reads the passive half, which the output carries unchanged.
  Blocks that support a `ConditionCache` compute their condition-only terms once for the
  inverse and the re-run, and each pass splits an upsampled condition once for all its
  blocks (`sharing_sources`).

The graph runs as one autograd Function whose inputs include every parameter that requires
grad, so parameter gradients are accumulated by autograd itself (DistributedDataParallel's
hooks fire as usual). Any FrEIA module with an exact inverse works, with splits (several
outputs, some leaving as graph outputs) and conditions shared by many nodes.

Data-dependent initialisation: while any module is uninitialised (`is_initialized` False,
or FrEIA's `init_on_next_batch`), or under no_grad, the graph runs as usual.

Drift guard: reconstruction loses precision where a block contracts strongly (an affine
scale near its floor of 1e-4, an ill-conditioned 1x1 conv), and errors grow from unit to
unit. Every unit's input (but a stored one) is fingerprinted in the forward (`PROBES`
random projections and the norm per sample: a few numbers, whatever its size); in the
backward the fingerprint of the reconstructed input gives its relative error ||x_rec - x||
/ ||x|| (wherever the error lies), and the re-run forward is compared with the output it
must reproduce (max |error| / max |output|). Where either exceeds `tolerance`
(`TOLERANCES`: 1e-5 in float32, 1e-10 in float64), the unit's exact input is recomputed by
a no-grad forward (from the last stored input before it, else from the graph inputs), its
gradients come from that, a `DriftWarning` names it, and its input is stored in every later
forward (`keep`), so that errors start from zero again there: gradients are never computed
from a drifted input, and only the units that need it cost memory.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
from FrEIA.framework import GraphINN
from torch import Tensor, nn

from .condition_cache import ConditionCache
from .flow_step import FlowStep
from .upsampled import sharing_sources

PROBES = 4
"""Random projections per sample in a node input's fingerprint."""
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5}
"""The default drift tolerance per dtype (1e-2 for the others)."""


class DriftWarning(UserWarning):
    """A node's input could not be reconstructed precisely; it is stored from now on."""


def needs_initialization(module: torch.nn.Module) -> bool:
    """Whether a data-dependent initialisation of some submodule is still pending."""
    return any(getattr(m, "is_initialized", True) is False
               or getattr(m, "init_on_next_batch", False) for m in module.modules())


def relative_error(value: Tensor, reference: Tensor) -> float:
    """max |value - reference| / max |reference| (0 for two empty tensors)."""
    if reference.numel() == 0:
        return 0.0
    scale = reference.abs().max().clamp_min(torch.finfo(reference.dtype).tiny)
    return float((value - reference).abs().max() / scale)


@functools.lru_cache(maxsize=256)
def _directions(channels: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The fixed random factors (across channels, along the rest) of a fingerprint's probes,
    seeded by the shape and drawn once per shape and device."""
    generator = torch.Generator().manual_seed(channels * 1_000_003 + length)
    across = torch.randn(channels, PROBES, generator=generator, dtype=torch.float64)
    along = torch.randn(length, PROBES, generator=generator, dtype=torch.float64)
    return across.to(device), along.to(device)


def fingerprint(x: Tensor) -> Tensor:
    """[B, PROBES + 1] float64: each sample's projections on `PROBES` fixed random rank-one
    directions (channels x the rest, seeded by the shape) and its norm."""
    flat = x.detach().reshape(x.shape[0], x.shape[1] if x.dim() > 1 else 1, -1).double()
    across, along = _directions(flat.shape[1], flat.shape[2], flat.device)
    projections = ((flat @ along) * across).sum(1)
    return torch.cat([projections, flat.flatten(1).norm(dim=1, keepdim=True)], 1)


def fingerprint_error(value: Tensor, reference: Tensor) -> float:
    """max over samples and probes of |projection difference| / norm of the reference: an
    estimate of ||x - x_reference|| / ||x_reference||, wherever the difference lies."""
    norm = reference[:, -1:].clamp_min(torch.finfo(torch.float64).tiny)
    return float(((value[:, :-1] - reference[:, :-1]).abs() / norm).max())


def _drift(errors) -> float:
    return max(errors, default=0.0)


@dataclass(eq=False)
class _Unit:
    """One module the runner steps through: a graph node, or one part of a `FlowStep` node.
    `inputs` and `outputs` are the keys of the values it reads and writes."""

    name: str
    module: nn.Module
    inputs: list
    outputs: list
    conditions: list


def _units(nodes) -> list[_Unit]:
    """The graph's nodes in order, each `FlowStep` node as its parts (one unit each)."""
    units = []
    for node in nodes:
        outputs = [(node, i) for i in range(len(node.outputs))]
        if not isinstance(node.module, FlowStep):
            units.append(_Unit(node.name, node.module, list(node.inputs), outputs,
                               list(node.conditions)))
            continue
        inputs, parts = list(node.inputs), node.module.parts
        for k, part in enumerate(parts):
            name = f"{node.name}.{part.name}"
            out = outputs if k == len(parts) - 1 else [(name, 0)]
            units.append(_Unit(name, getattr(node.module, part.name), inputs, out,
                               [node.conditions[i] for i in part.conditions]))
            inputs = out
    return units


def _joined(pieces: list[Tensor]) -> Tensor:
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


def _joined_gradient(pieces: list[Tensor], grads) -> Tensor | None:
    if all(g is None for g in grads):
        return None
    return _joined([torch.zeros_like(p) if g is None else g
                    for p, g in zip(pieces, grads, strict=True)])


class MemorySavingFlow:
    """Runs `graph` forward with memory-saving backprop (see the module docstring).

    `keep` holds the names of the units whose inputs are stored (those that drifted);
    `tolerance` None means the inputs' dtype's entry of `TOLERANCES`.
    """

    def __init__(self, graph: GraphINN, tolerance: float | None = None) -> None:
        self.graph, self.tolerance = graph, tolerance
        special = {*graph.in_nodes, *graph.out_nodes, *graph.condition_nodes}
        self.units = _units(node for node in graph.node_list if node not in special)
        self.caching = {unit for unit in self.units
                        if any(hasattr(m, "condition_cache") for m in unit.module.modules())}
        self.keep: set[str] = set()

    def __call__(self, x_or_z, c=None, jac: bool = True) -> tuple[tuple[Tensor, ...], Tensor]:
        inputs = (x_or_z,) if torch.is_tensor(x_or_z) else tuple(x_or_z)
        conditions = () if c is None else ((c,) if torch.is_tensor(c) else tuple(c))
        if not torch.is_grad_enabled() or needs_initialization(self.graph):
            return self.graph(inputs, c=list(conditions), jac=jac)
        if len(inputs) != len(self.graph.in_nodes):
            raise ValueError(f"Got {len(inputs)} inputs, expected {len(self.graph.in_nodes)}.")
        if len(conditions) != len(self.graph.condition_nodes):
            raise ValueError(f"Got {len(conditions)} conditions, expected "
                             f"{len(self.graph.condition_nodes)}.")
        params = [p for p in self.graph.parameters() if p.requires_grad]
        *outputs, logdet = _GraphFunction.apply(self, len(inputs), len(conditions), *inputs,
                                                *conditions, *params)
        if not jac:
            logdet = torch.zeros(inputs[0].shape[0]).to(inputs[0])
        return tuple(outputs), logdet

    # ---- passes -------------------------------------------------------------------------

    def _conditions(self, unit: _Unit, conditions: dict) -> dict:
        return {"c": [conditions[n] for n in unit.conditions]} if unit.conditions else {}

    def _call(self, unit: _Unit, x, conditions: dict, rev: bool = False):
        return unit.module(tuple(x), rev=rev, jac=True, **self._conditions(unit, conditions))

    def _start(self, inputs, conditions) -> tuple[dict, dict]:
        values = {(node, 0): x for node, x in zip(self.graph.in_nodes, inputs, strict=True)}
        return values, dict(zip(self.graph.condition_nodes, conditions, strict=True))

    @torch.no_grad()
    @sharing_sources()
    def forward(self, inputs, conditions):
        """(outputs, logdet, fingerprints, kept inputs) of a no-grad pass."""
        values, conds = self._start(inputs, conditions)
        logdet = torch.zeros(inputs[0].shape[0]).to(inputs[0])
        fingerprints, kept = {}, {}
        for unit in self.units:
            x = [values.pop(key) for key in unit.inputs]
            if unit.name in self.keep:  # the backward re-runs it from x, no check needed
                kept[unit] = x
            else:
                fingerprints[unit] = [fingerprint(t) for t in x]
            out, unit_logdet = self._call(unit, x, conds)
            values.update(zip(unit.outputs, out, strict=True))
            logdet = logdet + unit_logdet
        outputs = [values[out_node.inputs[0]] for out_node in self.graph.out_nodes]
        return outputs, logdet, fingerprints, kept

    @torch.no_grad()
    @sharing_sources()
    def exact_inputs(self, target: _Unit, inputs, conditions, kept: dict) -> list[Tensor]:
        """The inputs of unit `target`, by a no-grad forward from the last unit before it
        whose inputs are stored (`kept`) and determine all the values up to it, else from
        the graph inputs."""
        index = self.units.index(target)
        first, (values, conds) = 0, self._start(inputs, conditions)
        for i in reversed(range(index)):
            unit = self.units[i]
            if unit in kept and self._self_contained(i, index):
                first, values = i, dict(zip(unit.inputs, kept[unit], strict=True))
                break
        for unit in self.units[first:index]:
            out, _ = self._call(unit, [values.pop(key) for key in unit.inputs], conds)
            values.update(zip(unit.outputs, out, strict=True))
        return [values[key] for key in target.inputs]

    def _self_contained(self, first: int, last: int) -> bool:
        """Whether units first..last read only values produced from unit first's inputs."""
        available = set(self.units[first].inputs)
        for unit in self.units[first: last + 1]:
            if not available.issuperset(unit.inputs):
                return False
            available = (available - set(unit.inputs)) | set(unit.outputs)
        return True

    @sharing_sources()
    def backward(self, saved, grad_outputs, grad_logdet, needs_input_grad, needs_condition_grad):
        """Gradients w.r.t. the graph inputs, the conditions and the parameters."""
        inputs, conditions, outputs, fingerprints, kept = saved
        tolerance = self.tolerance
        if tolerance is None:
            tolerance = TOLERANCES.get(inputs[0].dtype, 1e-2)
        values, grads = {}, {}
        for out_node, y, g in zip(self.graph.out_nodes, outputs, grad_outputs, strict=True):
            values[out_node.inputs[0]], grads[out_node.inputs[0]] = y, g
        true_inputs, _ = self._start(inputs, conditions)
        conds = {node: c.detach().requires_grad_(need) for node, c, need in
                 zip(self.graph.condition_nodes, conditions, needs_condition_grad, strict=True)}
        param_grads: dict[int, Tensor] = {}
        for unit in reversed(self.units):
            y = [values.pop(key) for key in unit.outputs]
            g = [grads.pop(key, None) for key in unit.outputs]
            if unit in kept:
                x = kept[unit]
            elif all(key in true_inputs for key in unit.inputs):
                x = [true_inputs[key] for key in unit.inputs]
            else:
                x = None
            with ConditionCache().active(unit.module):
                if x is not None:
                    pieces, out, unit_logdet = self._rerun(unit, x, conds)
                else:
                    pieces, out, unit_logdet = self._reconstruct(unit, y, conds)
                    drift = _drift([
                        *(fingerprint_error(fingerprint(_joined(p)), f)
                          for p, f in zip(pieces, fingerprints[unit], strict=True)),
                        *(relative_error(o.detach(), t) for o, t in zip(out, y, strict=True))])
                    if drift > tolerance:
                        self._report(unit, drift, tolerance)
                        x = self.exact_inputs(unit, inputs, conditions, kept)
                        pieces, out, unit_logdet = self._rerun(unit, x, conds)
            unit_conds = [conds[n] for n in unit.conditions if conds[n].requires_grad]
            params = [p for p in unit.module.parameters() if p.requires_grad]
            leaves = [t for p in pieces for t in p]
            gx, gc, gp = _node_gradients(out, g, unit_logdet, grad_logdet, leaves, unit_conds,
                                         params)
            gx = iter(gx)
            for key, p in zip(unit.inputs, pieces, strict=True):
                values[key] = _joined(p).detach()
                gxi = _joined_gradient(p, [next(gx) for _ in p])
                if gxi is not None:
                    grads[key] = gxi if grads.get(key) is None else grads[key] + gxi
            for c, gci in zip(unit_conds, gc, strict=True):
                if gci is not None:
                    c.grad = gci if c.grad is None else c.grad + gci
            for p, gpi in zip(params, gp, strict=True):
                if gpi is not None:
                    param_grads[id(p)] = gpi + param_grads[id(p)] if id(p) in param_grads else gpi
        grad_inputs = [grads.get((node, 0)) if need else None
                       for node, need in zip(self.graph.in_nodes, needs_input_grad, strict=True)]
        grad_conditions = [conds[node].grad for node in self.graph.condition_nodes]
        return grad_inputs, grad_conditions, param_grads

    def _reconstruct(self, unit: _Unit, y, conds):
        """(input pieces, outputs, logdet): the unit's input from its output, and its forward
        on it with grad. A block with `reconstruct_for_backward` does both in one evaluation
        of its subnet; other units run their inverse (under grad where they support a
        condition cache, so that the re-run reuses its condition terms, graph and all)."""
        reconstruct = getattr(unit.module, "reconstruct_for_backward", None)
        if reconstruct is not None:
            with torch.enable_grad():
                pieces, out, unit_logdet = reconstruct(tuple(y), **self._conditions(unit, conds))
            return pieces, list(out), unit_logdet
        with torch.set_grad_enabled(unit in self.caching):
            x = self._call(unit, y, conds, rev=True)[0]
        return self._rerun(unit, x, conds)

    def _rerun(self, unit: _Unit, x, conds):
        """The unit's forward with grad on detached copies of `x`: (pieces, outputs, logdet)."""
        x = [t.detach().requires_grad_() for t in x]
        with torch.enable_grad():
            out, unit_logdet = self._call(unit, x, conds)
        return [[t] for t in x], list(out), unit_logdet

    def _report(self, unit: _Unit, drift: float, tolerance: float) -> None:
        self.keep.add(unit.name)
        warnings.warn(
            f"memory-saving backprop: the input of {unit.name} reconstructs with relative error "
            f"{drift:.3g} > {tolerance:.3g}; this step's gradients use its exact input, and it is "
            "stored from now on", DriftWarning, stacklevel=2)


def _node_gradients(out, grad_out, logdet, grad_logdet, x, conds, params):
    """autograd.grad of one node's outputs and log-det w.r.t. x, conds and params."""
    pairs = [(o, g) for o, g in zip(out, grad_out, strict=True)
             if g is not None and o.requires_grad]
    if torch.is_tensor(logdet) and logdet.requires_grad and grad_logdet is not None:
        pairs.append((logdet, grad_logdet))
    wrt = [*x, *conds, *params]
    if not pairs:
        grads = [None] * len(wrt)
    else:
        grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                    allow_unused=True)
    return grads[: len(x)], grads[len(x): len(x) + len(conds)], grads[len(x) + len(conds):]


class _GraphFunction(torch.autograd.Function):
    """The graph as one Function of (inputs, conditions, parameters) -> (outputs, logdet)."""

    @staticmethod
    def forward(ctx, flow: MemorySavingFlow, n_inputs: int, n_conditions: int, *tensors):
        inputs, conditions = tensors[:n_inputs], tensors[n_inputs: n_inputs + n_conditions]
        outputs, logdet, fingerprints, kept = flow.forward(inputs, conditions)
        outputs = [y.clone() if any(y is t for t in tensors) else y for y in outputs]
        ctx.flow, ctx.counts = flow, (n_inputs, n_conditions)
        ctx.params = tensors[n_inputs + n_conditions:]
        ctx.fingerprints, ctx.kept = fingerprints, kept
        ctx.save_for_backward(*inputs, *conditions, *outputs)
        return (*outputs, logdet)

    @staticmethod
    def backward(ctx, *grads):
        n_inputs, n_conditions = ctx.counts
        saved = ctx.saved_tensors
        inputs, conditions = saved[:n_inputs], saved[n_inputs: n_inputs + n_conditions]
        outputs = saved[n_inputs + n_conditions:]
        needs = ctx.needs_input_grad[3:]
        grad_inputs, grad_conditions, param_grads = ctx.flow.backward(
            (inputs, conditions, outputs, ctx.fingerprints, ctx.kept), grads[:-1], grads[-1],
            needs[:n_inputs], needs[n_inputs: n_inputs + n_conditions])
        ctx.fingerprints = ctx.kept = None
        return (None, None, None, *grad_inputs, *grad_conditions,
                *(param_grads.get(id(p)) for p in ctx.params))
