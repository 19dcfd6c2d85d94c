"""Atomic writes: nothing half-written, temporaries of killed writers removed by the next
write, checkpoints stored once (last.pt and best.pt are links), SIGTERM cleans up."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cinn_sr.datasets import sample_photo_paths
from cinn_sr.datasets.atomic import atomic_path, atomic_write_text, remove_stale_temporaries
from cinn_sr.runs import CheckpointRotation


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_failed_write_leaves_nothing_and_the_old_file_intact(tmp_path):
    target = atomic_write_text(tmp_path / "a.json", "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        temp.write_text("half")
        raise RuntimeError("disk full")
    assert sorted(os.listdir(tmp_path)) == ["a.json"] and target.read_text() == "old\n"
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(umask)
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_temporaries_of_ended_writers_are_removed_by_the_next_write(tmp_path):
    stale = tmp_path / f".last.pt.{dead_pid()}.k2j4x_.tmp"
    live = tmp_path / f".pack.h5.{os.getppid()}.abcdef.tmp"  # a running process's file
    other = tmp_path / "notes.tmp"
    for path in (stale, live, other):
        path.write_text("partial")
    atomic_write_text(tmp_path / "config.toml", "a = 1\n")
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path) == []


def test_last_and_best_are_links_to_the_step_checkpoint(tmp_path):
    rotation = CheckpointRotation(tmp_path, keep=1)
    rotation.write(10, True, lambda path: path.write_bytes(b"x" * 1000))
    rotation.write(20, False, lambda path: path.write_bytes(b"y" * 1000))
    step = tmp_path / "checkpoints" / "step_0000020.pt"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [step.name]
    assert os.path.samefile(step, tmp_path / "last.pt")
    assert (tmp_path / "best.pt").read_bytes() == b"x" * 1000  # step 10, rotated out
    assert step.stat().st_nlink == 2 and (tmp_path / "best.pt").stat().st_nlink == 1


def test_sigterm_during_pack_removes_its_temporary_file(tmp_path):
    photos = [str(path) for _, path in sample_photo_paths()] * 40  # about 20 s to pack
    out = tmp_path / "out" / "p.h5"
    log = open(tmp_path / "stderr.txt", "w")  # noqa: SIM115 (a pipe could fill and block)
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "pack", *photos, "--out", str(out), "--patch", "32",
         "--per-image", "200"],
        cwd=Path(__file__).parents[1], stderr=log,
    )
    deadline = time.monotonic() + 60
    while not (out.parent.exists() and any(out.parent.iterdir())):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)
    assert process.poll() is None, "pack ended before the signal"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert list(out.parent.iterdir()) == []
    log.close()
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MiB file system (tmpfs; needs root, as CI has), unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_one_line_and_leaves_nothing(small_disk, cache, monkeypatch):
    from click.testing import CliRunner

    from cli import main

    photos = [str(path) for _, path in sample_photo_paths()[:3]]
    result = CliRunner().invoke(main, ["pack", *photos, "--out", str(small_disk / "p.h5"),
                                       "--per-image", "100"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1].rsplit("\r", 1)[-1]
    assert last.startswith(
        f"Error: cannot write {small_disk / 'p.h5'}: no space left on the device"
    )
    assert list(small_disk.iterdir()) == []

    monkeypatch.setenv("CINN_SR_CACHE", str(cache))
    out = small_disk / "run"
    result = CliRunner().invoke(main, ["train", "--iterations", "2", "--checkpoint-every", "1",
                                       "--out", str(out)])
    assert result.exit_code == 1
    step = out / "checkpoints" / "step_0000001.pt"
    assert f"Error: cannot write {step}: no space left" in result.output
    assert list(small_disk.iterdir()) == []  # no run folder, no temporary
