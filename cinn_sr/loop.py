"""The step loop shared by flow training (`train`) and RRDB pre-training (`pretrain`).

A `Task` says what is trained and how it is scored, `LoopSettings` how long and how often
to log, validate and checkpoint; `run_loop` trains: sharded, seeded data order, one-time
model initialisation, freezing and DistributedDataParallel wrapping, skipping of
non-finite steps, progress bar, metrics log, validation, checkpoints and exact resumption
(weights, optimizer, schedule, step, RNG states; the data order is a pure function of seed
and step, see `ShardedBatches`). It writes into the run folder it is given and knows no
configuration format: what a checkpoint records of the run comes in `LoopSettings.record`.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cinn_sr.distributed import ProcessInfo, ShardedBatches, all_true, mean_over_ranks
from cinn_sr.rng import rng_state, seed_everything, set_rng_state
from cinn_sr.runs import CheckpointRotation, MetricsLog
from cinn_sr.step_checks import diagnose_step, gradients_finite, nonfinite_state


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
class LoopSettings:
    """How long the loop runs and how often it logs, validates and checkpoints.

    record: what each checkpoint stores as its "run_config" (the resolved configuration).
    """

    iterations: int
    batch_size: int
    seed: int = 0
    workers: int = 0
    val_every: int = 5000
    checkpoint_every: int = 5000
    keep_checkpoints: int = 5
    max_nonfinite: int = 20
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class ResumeState:
    """Training state stored in a checkpoint (everything but the model weights)."""

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


@dataclass
class LoopState:
    """Everything the loop changes from step to step."""

    step: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    trainable: list[nn.Parameter]
    module: nn.Module
    """The objective as trained: DDP-wrapped under several processes."""
    began: float
    """time.time() at step 0 (a resumed run counts the time before the interruption)."""
    skipped: int = 0
    best: float = math.inf
    saved: int | None = None
    """The step of the latest checkpoint, if any."""
    frozen_now: bool | None = None
    consecutive: int = 0
    """Non-finite steps in a row; `first_bad` says where the first of them came from."""
    first_bad: str = ""
    window: list[float] = field(default_factory=list)
    """Finite training losses since the last checkpoint."""
    validation: dict[str, float] = field(default_factory=dict)


def adam(params, lr: float, betas: tuple[float, float], weight_decay: float = 0.0
         ) -> torch.optim.Adam:
    """torch's Adam, with its fused kernel where the parameters' device has one (CPU, CUDA):
    the same update in one pass over all parameters (div2k-4x's 39 M on CPU: 41 ms, not 90)."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)


def run_loop(
    task: Task,
    settings: LoopSettings,
    info: ProcessInfo,
    train_set: Dataset,
    out: Path | None,
    resume: ResumeState | None = None,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train `task` up to `settings.iterations` (or `stop_at`) steps; returns a summary.

    Only rank 0 (`out` given) writes files; `out` is None on the other ranks.
    """
    pairs, batches = FlippedPairs(train_set), _shard(settings, info, len(train_set))
    state = _start(task, settings, info, _batch(pairs, batches.epoch_batches(0)[0]), resume)
    end = settings.iterations if stop_at is None else min(settings.iterations, stop_at)
    data = _stream(pairs, batches, settings, info, state.step)
    metrics = MetricsLog(out / "metrics.jsonl") if out is not None else None
    if metrics is not None:
        metrics.truncate_after(state.step)
    rotation = CheckpointRotation(out, settings.keep_checkpoints) if out is not None else None
    bar = tqdm(total=settings.iterations, initial=state.step, disable=not info.is_main,
               unit="it", dynamic_ncols=True, desc=task.name)
    try:
        while state.step < end:
            hr, lr = (t.to(info.device, non_blocking=True) for t in next(data))
            _update_freezing(state, task, info)
            rate = state.optimizer.param_groups[0]["lr"]
            loss, ok = _optimisation_step(state, task, info, hr, lr)
            state.step += 1
            _log_step(state, task, info, metrics, bar, loss, ok, rate)
            if state.consecutive >= settings.max_nonfinite:
                raise TrainingStopped(_divergence_message(state))
            validated = state.step % settings.val_every == 0 or state.step == end
            if validated and info.is_main:
                _validate(state, task, metrics, bar)
            if state.step % settings.checkpoint_every == 0 or state.step == end:
                _checkpoint(state, task, settings, info, rotation, validated)
    finally:
        bar.close()
    return {"step": state.step, "skipped": state.skipped, "best": state.best,
            "validation": state.validation}


def _shard(settings: LoopSettings, info: ProcessInfo, n: int) -> ShardedBatches:
    """This rank's batches; a ValueError when the patches or the batch do not divide."""
    if settings.batch_size % info.world_size:
        raise ValueError(
            f"batch_size {settings.batch_size} is not divisible by {info.world_size} processes"
        )
    try:
        return ShardedBatches(
            n, settings.batch_size // info.world_size, settings.seed, info.rank, info.world_size
        )
    except ValueError as error:
        raise ValueError(f"batch_size: {error}") from None


def _batch(dataset: Dataset, keys: list[tuple[int, bool]]) -> tuple[Tensor, Tensor]:
    pairs = [dataset[k] for k in keys]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _start(
    task: Task,
    settings: LoopSettings,
    info: ProcessInfo,
    first: tuple[Tensor, Tensor],
    resume: ResumeState | None,
) -> LoopState:
    """Initialise a fresh model on the first batch (or take a checkpoint's state), find the
    parameters the objective reaches, and build the optimizer and schedule."""
    hr, lr = (t.to(info.device) for t in first)
    if resume is None:
        task.initialize(hr, lr)
    if task.after_init is not None:
        task.after_init()
    trainable = _probe_trainable(task, hr, lr)
    optimizer = task.make_optimizer(trainable)
    scheduler = task.make_scheduler(optimizer)
    state = LoopState(0, optimizer, scheduler, trainable, task.objective, time.time())
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        state.step = state.saved = resume.step
        state.skipped, state.best = resume.skipped, resume.best
        state.began -= resume.elapsed
        if len(resume.rng) == info.world_size:
            set_rng_state(resume.rng[info.rank])
        else:
            seed_everything(settings.seed + 1000 * info.rank + resume.step)
    return state


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


def _stream(
    pairs: FlippedPairs, batches: ShardedBatches, settings: LoopSettings, info: ProcessInfo,
    step: int,
) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches from global step `step` on, loaded by `settings.workers` processes."""
    batches.start_at(step)
    loader = DataLoader(
        pairs, batch_sampler=batches, num_workers=settings.workers,
        pin_memory=info.device.type == "cuda", persistent_workers=settings.workers > 0,
        # its own generator: creating the iterator must not draw from the global RNG (resume)
        generator=torch.Generator().manual_seed(settings.seed),
    )
    return iter(loader)


def _update_freezing(state: LoopState, task: Task, info: ProcessInfo) -> None:
    """Freeze or unfreeze `task.frozen` when the step crosses `task.frozen_until`; under
    several processes, wrap the objective anew for the new set of trainable parameters."""
    frozen_now = state.step < task.frozen_until
    if frozen_now == state.frozen_now:
        return
    state.frozen_now = frozen_now
    trainable = {id(p) for p in state.trainable}
    for p in task.frozen:
        if id(p) in trainable:
            p.requires_grad_(not frozen_now)
    if info.distributed:
        state.module = task.objective  # the old wrapper and its gradient hooks go first
        gc.collect()
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        state.module = DistributedDataParallel(task.objective, device_ids=device_ids)


def _optimisation_step(
    state: LoopState, task: Task, info: ProcessInfo, hr: Tensor, lr: Tensor
) -> tuple[Tensor, bool]:
    """One Adam step on the batch, skipped (and diagnosed) when the loss or a gradient is not
    finite on any rank; the schedule advances either way."""
    state.optimizer.zero_grad(set_to_none=True)
    loss = state.module(hr, lr).mean()
    loss_finite = all_true(bool(torch.isfinite(loss)), info)
    ok = loss_finite
    if ok:
        loss.backward()
        ok = all_true(gradients_finite(state.trainable), info)
    if ok:
        state.optimizer.step()
        state.consecutive = 0
    else:
        state.optimizer.zero_grad(set_to_none=True)
        state.skipped += 1
        state.consecutive += 1
        if state.consecutive == 1:
            state.first_bad = diagnose_step(task.model, task.objective, hr, lr, loss_finite)
    with warnings.catch_warnings():  # a skipped first step still advances the schedule
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        state.scheduler.step()
    return loss.detach(), ok


def _log_step(
    state: LoopState, task: Task, info: ProcessInfo, metrics: MetricsLog | None, bar: tqdm,
    loss: Tensor, ok: bool, rate: float,
) -> None:
    """The step's line in metrics.jsonl and the progress bar."""
    value = mean_over_ranks(float(loss), info)
    if ok:
        state.window.append(value)
    if metrics is not None:
        record = {"step": state.step, "loss": value if ok else None, "lr": rate,
                  "time": round(time.time() - state.began, 3), "skipped": state.skipped}
        if not ok:
            record["nonfinite"] = state.first_bad
        metrics.write(record)
    if info.is_main:
        bar.set_postfix_str(
            f"loss {value:.4f} {task.loss_unit}, lr {rate:.2e}, skipped {state.skipped}",
            refresh=False,
        )
        bar.update(1)


def _divergence_message(state: LoopState) -> str:
    saved = (f"the last checkpoint (step {state.saved}) holds finite weights" if state.saved
             else "no checkpoint was written")
    return (f"stopped at step {state.step}: {state.consecutive} non-finite steps in a row "
            f"(first: {state.first_bad}); {saved}")


def _validate(state: LoopState, task: Task, metrics: MetricsLog | None, bar: tqdm) -> None:
    state.validation = task.validate(state.step)
    if metrics is not None:
        metrics.write({"step": state.step, **state.validation})
    bar.write(
        f"step {state.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in state.validation.items())
    )


def _checkpoint(
    state: LoopState, task: Task, settings: LoopSettings, info: ProcessInfo,
    rotation: CheckpointRotation | None, validated: bool,
) -> None:
    """Write step_N.pt (rank 0), update last.pt and best.pt; every rank gives its RNG state."""
    rngs = _gather_rng(info)
    if rotation is not None:
        score = _score(task, state.validation if validated else {}, state.window)
        state.window = []
        is_best = score <= state.best
        state.best = min(state.best, score)
        bad = nonfinite_state(task.model)
        if bad:
            raise TrainingStopped(
                f"step {state.step}: {bad} is not finite; not writing a checkpoint"
            )
        training = ResumeState(
            state.step, state.optimizer.state_dict(), state.scheduler.state_dict(), rngs,
            state.skipped, state.best, time.time() - state.began,
        )
        extra = {"kind": task.name, "run_config": settings.record,
                 "training": training.to_checkpoint()}
        rotation.write(state.step, is_best, lambda path: task.save(path, extra))
    state.saved = state.step


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
