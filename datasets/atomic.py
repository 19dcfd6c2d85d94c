"""Writing files atomically: a temporary file beside the target, renamed over it when complete.

Every file cinn-sr writes (patch files, images, checkpoints, configs, scores) goes through
`atomic_path`, so a reader never sees half a file and a failure leaves none. The temporary
name ``.{name}.{pid}.{random}.tmp`` records the writing process: each write first removes the
temporaries that processes no longer running left in its folder (after a SIGKILL or a power
cut; once per folder and process), and never one that a live process is still writing.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "remove_stale_temporaries",
    "remove_own_temporaries",
    "ensure_free_space",
]

SPACE_RESERVE = 4 * 2**20
"""Bytes `ensure_free_space` keeps free beyond the write (file system and HDF5 metadata)."""

_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")
_OPEN: set[Path] = set()
"""Temporaries this process is writing now."""
_CLEANED: set[Path] = set()
"""Folders whose stale temporaries this process has removed (once each, not per write)."""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries in ``folder`` whose writing process has ended; returns them."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY.match(name)
        if match and int(match.group(1)) != os.getpid() and not _running(int(match.group(1))):
            path = Path(folder) / name
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def ensure_free_space(path: str | os.PathLike, needed: int) -> None:
    """OSError (errno ENOSPC, a one-line message naming `path`) when the folder of `path`
    has not `needed` bytes free plus a reserve: checked before a write, so a full disk is
    one line instead of whatever the writing library makes of it."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the folder may not exist yet
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed + SPACE_RESERVE:
        error = OSError(
            f"cannot write {path}: no space left on the device ({free / 2**20:.1f} MiB free, "
            f"{(needed + SPACE_RESERVE) / 2**20:.1f} MiB needed)"
        )
        error.errno = errno.ENOSPC
        raise error


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` (with the usual
    ``0666 & ~umask`` permissions), on any error or interruption it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent.resolve() not in _CLEANED:
        remove_stale_temporaries(path.parent)
        _CLEANED.add(path.parent.resolve())
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                    dir=path.parent)
    os.close(handle)
    temp = Path(temp)
    _OPEN.add(temp)
    try:
        yield temp
        os.chmod(temp, _default_mode())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        _OPEN.discard(temp)


def remove_own_temporaries() -> None:
    """Delete the temporaries this process is writing (for a signal handler that exits)."""
    for temp in list(_OPEN):
        temp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8", newline="")
    return Path(path)
