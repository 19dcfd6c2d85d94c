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


def prepare_run_folder(out: str | Path, resuming: bool) -> Path:
    """Create `out` for a new run, refusing a folder that already holds another run."""
    out = Path(out)
    if not resuming and (out / "last.pt").exists():
        raise RunFolderError(
            f"{out} already holds a run (last.pt): pass --resume to continue it, "
            "or choose another --out"
        )
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    return out


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
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class CheckpointRotation:
    """Writes step checkpoints, keeps the last `keep`, and mirrors them to last.pt / best.pt."""

    def __init__(self, out: Path, keep: int) -> None:
        self.out, self.keep = out, keep
        self.folder = out / "checkpoints"

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
