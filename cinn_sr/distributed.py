"""Several processes: DistributedDataParallel under torchrun, data shards, rank-0-only writes.

`cinn-sr train --nproc N` re-runs the same command under `torch.distributed.run` (torchrun)
with N processes; each process calls `init_process()`, which joins the process group
(nccl on CUDA, gloo on CPU) from torchrun's environment variables. Every rank draws the
same permutation of the patch set for an epoch and keeps its own shard, so data order is a
pure function of (seed, epoch, rank): that is what makes resuming exact.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place in the job: rank among `world_size` and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when available, else the CPU; `cuda` without CUDA is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def init_process(device: str = "auto") -> ProcessInfo:
    """Join the torchrun process group if this process was launched by torchrun.

    Without torchrun's WORLD_SIZE (> 1) this is a single process on `device`. Under torchrun
    on CUDA each rank takes the GPU numbered by its LOCAL_RANK and uses nccl; on the CPU gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    base = resolve_device(device)
    if world_size <= 1:
        return ProcessInfo(0, 1, base)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        base = torch.device("cuda", local_rank)
        torch.cuda.set_device(base)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if base.type == "cuda" else "gloo")
    return ProcessInfo(dist.get_rank(), dist.get_world_size(), base)


def shutdown(info: ProcessInfo) -> None:
    """Leave the process group (no-op for a single process)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(value: object, info: ProcessInfo) -> object:
    """Rank 0's `value` on every rank (e.g. the run folder rank 0 created)."""
    if not info.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_true(flag: bool, info: ProcessInfo) -> bool:
    """True when `flag` is true on every rank (so all ranks take the same branch)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def mean_over_ranks(value: float, info: ProcessInfo) -> float:
    """The mean of a scalar over all ranks (for logging)."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


class ShardedBatches:
    """Batches of (patch index, flip) pairs: this rank's shard of a seeded epoch permutation.

    Epoch e shuffles all `n` patches with a torch.Generator seeded `seed + e` (identical on
    every rank), drops the tail so every rank gets the same count, keeps every
    `world_size`-th index starting at `rank`, and cuts that into batches of `batch_size`
    (the remainder is dropped). Horizontal flips are drawn from the same generator. Batch
    `k` of epoch `e` therefore never depends on anything that happened before, and
    `start_at(step)` positions the stream at any global step.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
        flips: bool = True,
    ) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.flips = rank, world_size, flips
        self.per_epoch = (n // world_size) // batch_size
        if self.per_epoch < 1:
            raise ValueError(
                f"{n} patches are fewer than one batch of {batch_size} per process "
                f"x {world_size} processes"
            )
        self.start = 0

    def start_at(self, step: int) -> None:
        """Make the first batch of the next iteration the one of global step `step`."""
        self.start = step

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, bool]]]:
        """All of this rank's batches of `epoch`."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.n, generator=g)
        flip = torch.rand(self.n, generator=g) < 0.5
        usable = (self.n // self.world_size) * self.world_size
        shard = order[:usable][self.rank :: self.world_size]
        pairs = [(int(i), bool(flip[i]) and self.flips) for i in shard]
        b = self.batch_size
        return [pairs[k * b : (k + 1) * b] for k in range(self.per_epoch)]

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        epoch, k = divmod(self.start, self.per_epoch)
        while True:
            yield from self.epoch_batches(epoch)[k:]
            epoch, k = epoch + 1, 0


def torchrun_args(nproc: int, argv: Sequence[str]) -> list[str]:
    """torchrun's arguments that run `python -m cli ARGV` in `nproc` processes on this host."""
    return ["--standalone", f"--nproc-per-node={nproc}", "-m", "cli", *argv]


def launched_by_torchrun() -> bool:
    """Whether this process is one of those torchrun started (it set WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


class LaunchInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM reached the torchrun launcher (its processes were stopped)."""


class LaunchFailed(RuntimeError):
    """A process torchrun started failed (torchrun printed its error)."""


def launch(nproc: int, argv: Sequence[str]) -> None:
    """Run the cinn-sr command `argv` under torchrun with `nproc` processes; wait for it.

    A failing rank raises `LaunchFailed`; Ctrl-C or SIGTERM raise `LaunchInterrupted`.
    torchrun's own log lines are kept to errors.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    try:
        run(get_args_parser().parse_args(torchrun_args(nproc, argv)))
    except (KeyboardInterrupt, SignalException) as error:
        raise LaunchInterrupted(f"interrupted ({error}): the {nproc} processes stopped") from None
    except ChildFailedError as error:
        raise LaunchFailed(str(error)) from None
