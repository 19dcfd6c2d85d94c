"""The training loop shared by flow training (`train`) and RRDB pre-training (`pretrain`).

A `Task` says what is trained and how it is scored; `run_loop` does the rest: sharded,
seeded data order, one-time model initialisation and DistributedDataParallel wrapping,
skipping of non-finite steps, progress bar, metrics log, validation, checkpoints and exact
resumption (weights, optimizer, schedule, step, RNG states; the data order is a pure
function of seed and step, see `ShardedBatches`).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cinn_sr.config import ConfigError, RunConfig, to_toml_dict
from cinn_sr.distributed import (
    ProcessInfo,
    ShardedBatches,
    all_true,
    mean_over_ranks,
)
from cinn_sr.runs import CheckpointRotation, MetricsLog


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps in a row); one-line message."""


class FlippedPairs(Dataset):
    """(hr, lr) pairs addressed by (index, flip): the flip (horizontal) is chosen by the sampler."""

    def __init__(self, pairs: Dataset) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, bool]) -> tuple[Tensor, Tensor]:
        index, flip = key
        hr, lr = self.pairs[index]
        if flip:
            hr, lr = hr.flip(-1), lr.flip(-1)
        return hr, lr


@dataclass
class Task:
    """What differs between flow training and RRDB pre-training.

    objective: module with forward(hr, lr) -> per-image loss [B] (what DDP wraps).
    initialize(hr, lr): one-time data-dependent init of a fresh model (ActNorm).
    make_optimizer(params) / make_scheduler(optimizer): the recipe.
    frozen / frozen_until: parameters held fixed while step < frozen_until.
    after_init(): runs once the model is initialised or loaded (e.g. torch.compile).
    validate(step) -> metrics; runs on rank 0 only (it may write sample grids).
    best_key: validation metric that picks best.pt (lower is better); None: training loss.
    save(path, extra): writes one checkpoint file atomically.
    """

    name: str
    model: nn.Module
    objective: nn.Module
    initialize: Callable[[Tensor, Tensor], None]
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    make_scheduler: Callable[[torch.optim.Optimizer], Any]
    validate: Callable[[int], dict[str, float]]
    save: Callable[[Path, dict[str, Any]], None]
    loss_unit: str = "bpd"
    best_key: str | None = None
    frozen: list[nn.Parameter] = field(default_factory=list)
    frozen_until: int = 0
    after_init: Callable[[], object] | None = None


@dataclass
class ResumeState:
    """Training state read from a checkpoint (everything but the model weights)."""

    step: int
    optimizer: dict
    scheduler: dict
    rng: list[dict]
    skipped: int = 0
    best: float = math.inf
    elapsed: float = 0.0

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's "training" entry (shallow: no copies of the optimizer state)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> ResumeState:
        """From a checkpoint dict (its "training" entry)."""
        return cls(**payload["training"])


def rng_state() -> dict[str, Any]:
    """This process's RNG states: python, numpy, torch CPU and (when present) CUDA.

    Made of tensors, numbers and lists only, so checkpoints load with weights_only=True.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def locate_nonfinite_output(model: nn.Module, objective: nn.Module, hr: Tensor, lr: Tensor) -> str:
    """The first module (in call order) whose output holds a NaN or inf for this batch."""
    found: list[str] = []

    def hook(name: str):
        def check(_module, _inputs, output) -> None:
            tensors = output if isinstance(output, (tuple, list)) else (output,)
            flat = [t for item in tensors for t in (item if isinstance(item, (tuple, list)) else (item,))]
            if not found and any(
                isinstance(t, Tensor) and t.is_floating_point() and not torch.isfinite(t).all()
                for t in flat
            ):
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


def _diagnose(task: Task, hr: Tensor, lr: Tensor, loss_finite: bool) -> str:
    """Where a non-finite step came from: input, a weight, a gradient or a layer's output."""
    if not (torch.isfinite(hr).all() and torch.isfinite(lr).all()):
        return "input batch"
    named = list(task.model.named_parameters())
    where = first_nonfinite([(f"weight {n}", p) for n, p in named])
    if where:
        return where
    if loss_finite:
        return first_nonfinite([(f"gradient of {n}", p.grad) for n, p in named]) or "gradient"
    return locate_nonfinite_output(task.model, task.objective, hr, lr)


def _batch(dataset: Dataset, keys: list[tuple[int, bool]]) -> tuple[Tensor, Tensor]:
    pairs = [dataset[k] for k in keys]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def run_loop(
    task: Task,
    config: RunConfig,
    info: ProcessInfo,
    train_set: Dataset,
    out: Path | None,
    resume: ResumeState | None = None,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train `task` up to `config.iterations` (or `stop_at`) steps; returns a summary.

    Only rank 0 (`out` given) writes files; `out` is None on the other ranks.
    """
    if config.batch_size % info.world_size:
        raise TrainingStopped(
            f"batch_size {config.batch_size} is not divisible by {info.world_size} processes"
        )
    device = info.device
    pairs = FlippedPairs(train_set)
    try:
        batches = ShardedBatches(
            len(train_set), config.batch_size // info.world_size, config.seed, info.rank,
            info.world_size,
        )
    except ValueError as error:
        raise ConfigError(f"batch_size: {error}") from None
    start = resume.step if resume else 0
    end = min(config.iterations, stop_at) if stop_at is not None else config.iterations

    hr0, lr0 = (t.to(device) for t in _batch(pairs, batches.epoch_batches(0)[0]))
    if resume is None:
        task.initialize(hr0, lr0)
    if task.after_init is not None:
        task.after_init()
    trainable = _probe_trainable(task, hr0, lr0)
    optimizer = task.make_optimizer(trainable)
    scheduler = task.make_scheduler(optimizer)
    skipped, best, elapsed = 0, math.inf, 0.0
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        skipped, best, elapsed = resume.skipped, resume.best, resume.elapsed
        if len(resume.rng) == info.world_size:
            set_rng_state(resume.rng[info.rank])
        else:
            seed_everything(config.seed + 1000 * info.rank + start)

    batches.start_at(start)
    # its own generator: creating the iterator must not draw from the global RNG (resume)
    loader = DataLoader(
        pairs, batch_sampler=batches, num_workers=config.workers,
        pin_memory=device.type == "cuda", persistent_workers=config.workers > 0,
        generator=torch.Generator().manual_seed(config.seed),
    )
    metrics = MetricsLog(out / "metrics.jsonl") if out is not None else None
    if metrics is not None:
        metrics.truncate_after(start)
    rotation = CheckpointRotation(out, config.keep_checkpoints) if out is not None else None
    trainable_ids = {id(p) for p in trainable}
    frozen = [p for p in task.frozen if id(p) in trainable_ids]
    bar = tqdm(
        total=config.iterations, initial=start, disable=not info.is_main, unit="it",
        dynamic_ncols=True, desc=task.name,
    )
    module: nn.Module = task.objective
    frozen_now: bool | None = None
    consecutive, first_bad = 0, ""
    window: list[float] = []
    last_val: dict[str, float] = {}
    began = time.time() - elapsed
    data = iter(loader)
    step = start
    saved = start if start > 0 else None  # the step of the latest checkpoint, if any
    try:
        while step < end:
            hr, lr = next(data)
            hr = hr.to(device, non_blocking=True)
            lr = lr.to(device, non_blocking=True)
            if (step < task.frozen_until) != frozen_now:
                frozen_now = step < task.frozen_until
                for p in frozen:
                    p.requires_grad_(not frozen_now)
                if info.distributed:
                    # a new wrapper for the new set of trainable parameters; the old one and
                    # its gradient hooks go first
                    module = task.objective
                    gc.collect()
                    module = DistributedDataParallel(
                        task.objective, device_ids=[device.index] if device.type == "cuda" else None
                    )
            rate = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            loss = module(hr, lr).mean()
            loss_finite = all_true(bool(torch.isfinite(loss)), info)
            ok = loss_finite
            if ok:
                loss.backward()
                ok = all_true(gradients_finite(trainable), info)
            if ok:
                optimizer.step()
                consecutive = 0
            else:
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                consecutive += 1
                if consecutive == 1:
                    first_bad = _diagnose(task, hr, lr, loss_finite)
            with warnings.catch_warnings():  # a skipped first step still advances the schedule
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                scheduler.step()
            step += 1
            value = mean_over_ranks(float(loss.detach()), info)
            if ok:
                window.append(value)
            if metrics is not None:
                record = {
                    "step": step, "loss": value if ok else None, "lr": rate,
                    "time": round(time.time() - began, 3), "skipped": skipped,
                }
                if not ok:
                    record["nonfinite"] = first_bad
                metrics.write(record)
            if info.is_main:
                bar.set_postfix_str(
                    f"loss {value:.4f} {task.loss_unit}, lr {rate:.2e}, skipped {skipped}",
                    refresh=False,
                )
                bar.update(1)
            if consecutive >= config.max_nonfinite:
                raise TrainingStopped(
                    f"stopped at step {step}: {consecutive} non-finite steps in a row "
                    f"(first: {first_bad}); "
                    + (f"the last checkpoint (step {saved}) holds finite weights" if saved
                       else "no checkpoint was written")
                )
            validating = step % config.val_every == 0 or step == end
            checkpointing = step % config.checkpoint_every == 0 or step == end
            if validating and info.is_main:
                last_val = task.validate(step)
                if metrics is not None:
                    metrics.write({"step": step, **last_val})
                bar.write(
                    f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_val.items())
                )
            if checkpointing:
                rngs = _gather_rng(info)
                if rotation is not None:
                    score = _score(task, last_val if validating else {}, window)
                    window = []
                    is_best = score <= best
                    best = min(best, score)
                    _check_finite_weights(task.model, step)
                    state = ResumeState(
                        step, optimizer.state_dict(), scheduler.state_dict(), rngs, skipped,
                        best, time.time() - began,
                    )
                    extra = {"kind": task.name, "run_config": to_toml_dict(config),
                             "training": state.to_checkpoint()}
                    rotation.write(step, is_best, lambda p, e=extra: task.save(p, e))
                saved = step
    finally:
        bar.close()
    return {"step": step, "skipped": skipped, "best": best, "validation": last_val}


def _score(task: Task, validation: dict[str, float], window: list[float]) -> float:
    """The checkpoint's score (lower is better): the validation metric `best_key` of a
    validation run at this very step (inf when none ran: an earlier step's value would
    mark unvalidated weights best), or the mean training loss since the last checkpoint."""
    if task.best_key is not None:
        value = validation.get(task.best_key, math.inf)
    else:
        value = sum(window) / len(window) if window else math.inf
    return value if math.isfinite(value) else math.inf


def _gather_rng(info: ProcessInfo) -> list[dict[str, Any]]:
    """Every rank's RNG state (rank order), on every rank."""
    state = rng_state()
    if not info.distributed:
        return [state]
    import torch.distributed as dist

    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, state)
    return states


def _check_finite_weights(model: nn.Module, step: int) -> None:
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    bad = first_nonfinite([(n, t) for n, t in tensors if t.is_floating_point()])
    if bad:
        raise TrainingStopped(f"step {step}: {bad} is not finite; not writing a checkpoint")


def _probe_trainable(task: Task, hr: Tensor, lr: Tensor) -> list[nn.Parameter]:
    """The parameters the objective actually reaches: one forward/backward on a batch.

    Parameters that get no gradient (e.g. the ESRGAN head during flow training) are set to
    requires_grad=False and left out of the optimizer, so DDP never waits for them.
    """
    params = [p for p in task.model.parameters() if p.requires_grad]
    task.objective(hr, lr).mean().backward()
    used = []
    for p in params:
        if p.grad is None:
            p.requires_grad_(False)
        else:
            used.append(p)
        p.grad = None
    return used

