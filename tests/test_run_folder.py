"""Run folders: locked while a process trains in them, resuming an older checkpoint inside
one is refused (a fork goes to a new folder), a cut metrics line does not stop a resume,
a failed start leaves no folder behind."""

import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

import cinn_sr
from cinn_sr.runs import RunFolderError, RunFolderLock, read_metrics
from cli import main


@pytest.fixture
def env_cache(cache, monkeypatch):
    monkeypatch.setenv("CINN_SR_CACHE", str(cache))
    return cache


def train(out, *args):
    return CliRunner().invoke(
        main, ["train", "--iterations", "4", "--batch-size", "2", "--val-count", "1",
               "--checkpoint-every", "2", "--val-every", "4", "--device", "cpu",
               "--out", str(out), *map(str, args)],
    )


def steps_logged(out) -> list[int]:
    """The training steps of OUT/metrics.jsonl, sorted."""
    return sorted(r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r)


def last_line(result) -> str:
    return result.output.strip().splitlines()[-1]


def test_a_folder_locked_by_another_process_is_refused(tmp_path, env_cache):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from cinn_sr.runs import RunFolderLock
            RunFolderLock(Path({str(out)!r})).acquire()
            print("locked", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = rf"in use by another run \(process {holder.pid}\)"
        with pytest.raises(RunFolderError, match=busy):
            RunFolderLock(out).acquire()
        result = train(out)
        assert result.exit_code == 1 and f"process {holder.pid}" in last_line(result)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    lock = RunFolderLock(out)
    lock.acquire()  # the kernel released the killed holder's lock
    lock.release()


def test_resuming_an_older_checkpoint_in_place_is_refused_and_a_fork_works(tmp_path, env_cache):
    out = tmp_path / "run"
    assert train(out).exit_code == 0
    old = out / "checkpoints" / "step_0000002.pt"
    assert old.exists()
    refused = train(out, "--resume", old)
    assert refused.exit_code == 1
    assert "holds checkpoints up to step 4" in last_line(refused) and "--out" in last_line(refused)
    fork = tmp_path / "fork"
    forked = CliRunner().invoke(
        main, ["train", "--iterations", "6", "--out", str(fork), "--resume", str(old)]
    )
    assert forked.exit_code == 0, forked.output
    steps = sorted(r["step"] for r in read_metrics(fork / "metrics.jsonl") if "loss" in r)
    assert steps == [3, 4, 5, 6]
    assert steps_logged(out) == [1, 2, 3, 4]


def test_a_cut_last_metrics_line_does_not_stop_a_resume(tmp_path, env_cache):
    out = tmp_path / "run"
    assert train(out).exit_code == 0
    with open(out / "metrics.jsonl", "a") as log:
        log.write('{"step": 5, "lo')  # what a SIGKILL mid-write leaves
    resumed = CliRunner().invoke(
        main, ["train", "--iterations", "6", "--out", str(out), "--resume"]
    )
    assert resumed.exit_code == 0, resumed.output
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert all(line.endswith("}") for line in lines)
    assert steps_logged(out) == list(range(1, 7))


def test_failed_starts_leave_no_run_folder(tmp_path, env_cache):
    model = cinn_sr.SRFlow.from_preset("tiny-4x")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    nan_init = cinn_sr.save_checkpoint(tmp_path / "nan.pt", model)
    cases = [
        (["--batch-size", "5000"], "fewer than one batch"),
        (["--init", nan_init], "is not finite"),
    ]
    for index, (args, message) in enumerate(cases):
        out = tmp_path / f"run{index}"
        result = CliRunner().invoke(
            main, ["train", "--iterations", "2", "--out", str(out), *map(str, args)]
        )
        assert result.exit_code == 1 and "Error: " in result.output and message in result.output
        assert not out.exists()
