"""Two CPU processes (gloo): shards, identical ActNorm init and parameters, rank-0-only writes."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from cinn_sr.checkpoint import save_checkpoint
from cinn_sr.config import TrainConfig, resolve
from cinn_sr.datasets.patch_dataset import PatchDataset
from cinn_sr.distributed import ShardedBatches, init_process, shutdown, torchrun_args
from cinn_sr.driver import train
from cinn_sr.model import SRFlow
from cinn_sr.runs import read_metrics

WORLD = 2
OPTIONS = {
    "iterations": 4, "batch_size": 4, "val_count": 1, "val_every": 4, "checkpoint_every": 4,
    "device": "cpu", "workers": 0, "noise": "none",
}


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A pre-trained encoder stand-in: any cinn-sr checkpoint holds one."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    save_checkpoint(path, SRFlow.from_preset("tiny-4x"))
    return path


def first_batch(patches, rank: int):
    keys = ShardedBatches(len(patches), OPTIONS["batch_size"] // WORLD, 0, rank, WORLD)
    pairs = [patches[i] for i, _ in keys.epoch_batches(0)[0]]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def actnorm_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("bias", "logs"))}


def worker(rank: int, port: int, cache: str, out: str, results: str, encoder: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD), CINN_SR_CACHE=cache,
    )
    torch.set_num_threads(1)
    info = init_process("cpu")
    patches = PatchDataset(os.path.join(cache, "default_patches_x4.h5"), augment=False)
    hr, lr = first_batch(patches, rank)
    torch.manual_seed(0)
    model = SRFlow.from_preset("tiny-4x")
    model.initialize(lr, hr)  # what training does first; statistics are averaged over ranks
    torch.save(actnorm_state(model), os.path.join(results, f"init{rank}.pt"))
    # the encoder is frozen for steps 1-2 and trained in steps 3-4 (two DDP wrappers)
    config = resolve(TrainConfig, cli={**OPTIONS, "out": out, "encoder": encoder})
    result = train(config, info=info)
    torch.save(result.model.state_dict(), os.path.join(results, f"final{rank}.pt"))
    shutdown(info)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shards_are_disjoint_deterministic_and_resumable():
    shards = [ShardedBatches(103, 5, seed=7, rank=r, world_size=WORLD) for r in range(WORLD)]
    epoch = [s.epoch_batches(3) for s in shards]
    indices = [[i for batch in e for i, _ in batch] for e in epoch]
    assert len(indices[0]) == len(indices[1]) == 50
    assert not set(indices[0]) & set(indices[1])
    assert epoch[0] == ShardedBatches(103, 5, seed=7, rank=0, world_size=WORLD).epoch_batches(3)
    assert epoch[0] != shards[0].epoch_batches(4)
    stream = iter(shards[0])
    straight = [next(stream) for _ in range(23)]
    shards[0].start_at(17)
    resumed = iter(shards[0])
    assert [next(resumed) for _ in range(6)] == straight[17:]


def test_two_gloo_processes_train_identically(cache, encoder_file, tmp_path):
    out, results = tmp_path / "run", tmp_path / "results"
    results.mkdir()
    args = (free_port(), str(cache), str(out), str(results), str(encoder_file))
    mp.spawn(worker, args=args, nprocs=WORLD)

    init = [torch.load(results / f"init{r}.pt") for r in range(WORLD)]
    patches = PatchDataset(cache / "default_patches_x4.h5", augment=False)
    batches = [first_batch(patches, r) for r in range(WORLD)]
    torch.manual_seed(0)
    single = SRFlow.from_preset("tiny-4x")
    single.initialize(torch.cat([b[1] for b in batches]), torch.cat([b[0] for b in batches]))
    union = actnorm_state(single)
    for name, value in init[0].items():
        assert torch.equal(value, init[1][name]), name
        assert torch.allclose(value, union[name], atol=1e-4), name

    final = [torch.load(results / f"final{r}.pt") for r in range(WORLD)]
    for name, value in final[0].items():
        assert torch.equal(value, final[1][name]), name
    pretrained = torch.load(encoder_file, weights_only=True)["model"]
    name = "encoder.conv_first.weight"
    assert not torch.equal(final[0][name], pretrained[name])  # trained after the frozen half
    saved = torch.load(out / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in final[0].items())
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4]  # one writer
    assert len(list((out / "samples").glob("*.png"))) == 1


def test_nproc_launches_torchrun(cache, tmp_path):
    assert torchrun_args(2, ["train"])[-3:] == ["-m", "cli", "train"]
    out = tmp_path / "run"
    env = {**os.environ, "CINN_SR_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "cli", "train", "--nproc", "2", "--iterations", "2",
            "--batch-size", "2", "--val-count", "1", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("train: 2 steps (0 skipped)") == 1  # once, not per launcher + rank 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [1, 2]
    assert (out / "last.pt").is_file()


def test_ctrl_c_under_nproc_2_is_one_line_and_leaves_a_resumable_run(cache, tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "CINN_SR_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "cli", "train", "--nproc", "2", "--iterations", "5000",
            "--batch-size", "2", "--val-count", "1", "--checkpoint-every", "5", "--device", "cpu",
            "--out", str(out)]
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends to the group
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "Traceback" not in stderr and "SignalException" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: interrupted: {out / 'last.pt'} holds step ")
    assert last.endswith(f"continue with --resume --out {out}")
