"""A training run's folder: naming, the metrics log and checkpoint rotation.

    OUT/last.pt          the latest checkpoint (replaced atomically)
    OUT/best.pt          the best so far (validation NLL/L1, or training loss without --val)
    OUT/checkpoints/     step_0005000.pt ..., the last k kept
    OUT/metrics.jsonl    one JSON object per line: training steps and validations
    OUT/config.toml      the resolved configuration
    OUT/samples/         PNG grids
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cinn_sr.datasets.atomic import atomic_path, atomic_write_text


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (one line)."""


def new_run_folder(label: str, root: str | Path = "runs") -> Path:
    """Create and return runs/<YYYYMMDD>-<label>-<n> with the first n not taken yet.

    `mkdir` without `exist_ok` makes two runs started at once take different folders.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.date.today():%Y%m%d}-{label}"
    n = 1
    while True:
        folder = root / f"{stem}-{n}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1


class RunFolderLock:
    """The exclusive right to train in a run folder: `flock` on `OUT/.lock` (the kernel
    releases it when the process ends, however it ends)."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or RunFolderError naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(
                f"{self.path.parent} is in use by another run (process {holder}): wait for it "
                "to end or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def prepare_run_folder(out: str | Path, resuming: bool, lock: RunFolderLock | None = None) -> Path:
    """Create `out` for a run, refusing a folder that already holds another run; with `lock`,
    take it first (a folder another process trains in is refused)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if lock is not None:
        lock.acquire()
    if not resuming and (out / "last.pt").exists():
        if lock is not None:
            lock.release()
        raise RunFolderError(
            f"{out} already holds a run (last.pt): pass --resume to continue it, "
            "or choose another --out"
        )
    return out


def latest_checkpoint_step(out: Path) -> int | None:
    """The step of the newest step checkpoint in `out/checkpoints`, None when there is none."""
    steps = [int(p.stem.removeprefix("step_")) for p in (out / "checkpoints").glob("step_*.pt")]
    return max(steps, default=None)


def atomic_link(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src` (a hard link: the bytes are stored once; a copy on
    file systems without links), replacing `dst` atomically."""
    with atomic_path(dst) as temp:
        temp.unlink()
        try:
            os.link(src, temp)
        except OSError:
            shutil.copyfile(src, temp)


class MetricsLog:
    """Append-only JSON-lines log, flushed after every line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop lines of steps after `step` (written after the checkpoint a resume starts from)."""
        if not self.path.exists():
            return
        kept = [
            line for line in self.path.read_text().splitlines()
            if (record := _record(line)) is not None and record.get("step", 0) <= step
        ]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def _record(line: str) -> dict[str, Any] | None:
    """One line's record; None for a blank or cut line (a killed writer's last line)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a metrics.jsonl file."""
    records = (_record(line) for line in Path(path).read_text().splitlines())
    return [record for record in records if record is not None]


class CheckpointRotation:
    """Writes step checkpoints, keeps the last `keep`, and mirrors them to last.pt / best.pt."""

    def __init__(self, out: Path, keep: int) -> None:
        self.out, self.keep = out, keep
        self.folder = out / "checkpoints"
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, is_best: bool, save: Callable[[Path], None]) -> Path:
        """`save(path)` writes the checkpoint file (atomically); then last/best are updated."""
        path = self.folder / f"step_{step:07d}.pt"
        save(path)
        atomic_link(path, self.out / "last.pt")
        if is_best:
            atomic_link(path, self.out / "best.pt")
        for old in sorted(self.folder.glob("step_*.pt"))[: -self.keep]:
            old.unlink()
        return path
