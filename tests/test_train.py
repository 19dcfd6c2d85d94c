"""Flow training and RRDB pre-training on real photo patches (tiny presets, CPU).

One 100-step flow run is shared: it must learn, leave a complete run folder, and a resume
from its step-30 checkpoint must reproduce its steps 31..60 exactly.
"""

import math

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cinn_sr
from cinn_sr.config import PretrainConfig, TrainConfig, read_toml, resolve
from cinn_sr.datasets import sample_photos, write_image
from cinn_sr.datasets.patch_dataset import PatchDataset
from cinn_sr.distributed import ProcessInfo, ShardedBatches
from cinn_sr.driver import loop_settings, pretrain, resolve_for_resume, train
from cinn_sr.loop import TrainingStopped, adam, run_loop
from cinn_sr.model import SRFlow
from cinn_sr.runs import read_metrics
from cinn_sr.train import build_flow_task
from cinn_sr.validation import validation_items
from cli import main

SMALL = {
    "batch_size": 4, "val_count": 2, "val_every": 50, "checkpoint_every": 30,
    "keep_checkpoints": 5, "device": "cpu", "workers": 0,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def env_cache(cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CINN_SR_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def straight(env_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    config = resolve(TrainConfig, cli={**SMALL, "iterations": 100, "out": str(out)})
    return train(config)


def losses(out):
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


def test_training_lowers_the_nll(straight):
    loss = losses(straight.out)
    assert sorted(loss) == list(range(1, 101))
    first, last = [loss[s] for s in range(1, 11)], [loss[s] for s in range(91, 101)]
    assert sum(last) / 10 < sum(first) / 10 - 0.3, (first, last)
    assert straight.skipped == 0


def test_the_training_adam_is_fused_and_takes_the_plain_adam_update():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 32, dtype=dtype)) for dtype in
              (torch.float32, torch.float64)]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    start = [p.detach().clone() for p in params]
    fused = adam(params, lr=1e-2, betas=(0.9, 0.99), weight_decay=1e-3)
    plain = torch.optim.Adam(copies, lr=1e-2, betas=(0.9, 0.99), weight_decay=1e-3)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params]
        for group, optimizer in ((params, fused), (copies, plain)):
            for p, g in zip(group, grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    for p, q, p0 in zip(params, copies, start, strict=True):
        assert (p - p0).abs().mean() > 5e-3  # five steps of about lr each
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7)


def test_run_folder_holds_everything(straight):
    out = straight.out
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    kept = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    assert kept == ["step_0000030.pt", "step_0000060.pt", "step_0000090.pt", "step_0000100.pt"]
    records = read_metrics(out / "metrics.jsonl")
    step = next(r for r in records if r.get("step") == 1)
    assert set(step) >= {"step", "loss", "lr", "time", "skipped"} and step["lr"] == 5e-4
    assert next(r for r in records if r.get("step") == 60 and "loss" in r)["lr"] == 2.5e-4
    val = [r for r in records if "val_nll_bpd" in r]
    assert [r["step"] for r in val] == [50, 100]
    for r in val:
        assert math.isfinite(r["val_nll_bpd"]) and r["val_psnr_t0"] > 10
        assert r["val_lr_psnr"] > 10 and r["val_nonfinite"] == 0
    grid = Image.open(out / "samples" / "step_0000100.png")
    assert grid.size == (5 * 64, 2 * 64)  # LR up | T=0 | T=0.5 | T=0.9 | HR, 2 held-out patches
    saved = resolve(TrainConfig, read_toml(out / "config.toml"))
    assert saved.iterations == 100 and saved.out == str(out)
    model = cinn_sr.load(out / "last.pt")
    trained = straight.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    assert model.sample(torch.rand(1, 3, 8, 8), temperature=0.5).shape == (1, 3, 32, 32)


def test_resume_from_step_30_repeats_steps_31_to_60_exactly(straight, tmp_path):
    checkpoint = straight.out / "checkpoints" / "step_0000030.pt"
    config, payload = resolve_for_resume(
        TrainConfig, checkpoint, None, {"out": str(tmp_path / "resumed")}, "config file"
    )
    assert config.iterations == 100 and config.seed == 0
    resumed = train(config, checkpoint, payload, stop_at=60)
    again, before = losses(resumed.out), losses(straight.out)
    assert sorted(again) == list(range(31, 61))
    for s in range(31, 61):
        assert again[s] == pytest.approx(before[s], abs=1e-6), s


def test_init_fine_tunes_a_whole_model_from_step_0(straight, tmp_path):
    config = resolve(
        TrainConfig,
        cli={**SMALL, "iterations": 2, "init": str(straight.out / "last.pt"),
             "out": str(tmp_path / "tuned")},
    )
    tuned = train(config)
    before, after = losses(straight.out), losses(tuned.out)
    assert sorted(after) == [1, 2]
    assert after[1] < sum(before[s] for s in range(1, 11)) / 10 - 0.5  # starts trained
    with pytest.raises(cinn_sr.CheckpointError, match="not a tiny-8x model"):
        train(resolve(TrainConfig, cli={**SMALL, "preset": "tiny-8x", "iterations": 1,
                                         "init": str(straight.out / "last.pt")}))


def test_a_nan_batch_is_skipped_and_counted(cache, tmp_path):
    config = resolve(TrainConfig, cli={**SMALL, "iterations": 5})
    patches = PatchDataset(cache / "default_patches_x4.h5", augment=False)
    order = ShardedBatches(len(patches), 4, config.seed).epoch_batches(0)
    poisoned = {order[2][1][0]}  # one patch of the third batch

    class Poisoned(torch.utils.data.Dataset):
        def __len__(self):
            return len(patches)

        def __getitem__(self, i):
            hr, lr = patches[i]
            return (hr * math.nan, lr) if i in poisoned else (hr, lr)

    model = _fresh_model(config)
    items = validation_items(None, patches, 1, 4)
    task = build_flow_task(model, config, items, tmp_path)
    info = ProcessInfo(0, 1, torch.device("cpu"))
    summary = run_loop(task, loop_settings(config), info, Poisoned(), tmp_path)
    assert summary["step"] == 5 and summary["skipped"] == 1
    records = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r}
    assert records[3]["loss"] is None and records[3]["nonfinite"] == "input batch"
    assert records[2]["skipped"] == 0 and records[5]["skipped"] == 1
    assert all(math.isfinite(records[s]["loss"]) for s in (1, 2, 4, 5))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_too_many_nonfinite_steps_stop_with_the_layer_named(cache, tmp_path):
    config = resolve(TrainConfig, cli={**SMALL, "iterations": 10, "max_nonfinite": 3})
    patches = PatchDataset(cache / "default_patches_x4.h5", augment=False)
    model = _fresh_model(config)
    task = build_flow_task(model, config, validation_items(None, patches, 1, 4), None)
    injector = model.flow_modules()["L2.step0"].injector
    original = task.initialize

    def initialize_then_break(hr, lr):
        original(hr, lr)
        with torch.no_grad():
            injector.subnet[4].bias.fill_(math.inf)

    task.initialize = initialize_then_break
    info = ProcessInfo(0, 1, torch.device("cpu"))
    with pytest.raises(TrainingStopped) as error:
        run_loop(task, loop_settings(config), info, patches, None)
    message = str(error.value)
    assert "stopped at step 3: 3 non-finite steps in a row" in message
    assert "injector.subnet.4.bias" in message and "\n" not in message
    assert "no checkpoint was written" in message  # none yet: not "the last checkpoint ..."


def test_best_checkpoint_is_a_validated_one(cache, tmp_path):
    """Checkpoints between validations must not inherit the last validation's score."""
    config = resolve(TrainConfig, cli={**SMALL, "iterations": 6, "checkpoint_every": 1,
                                       "val_every": 2, "keep_checkpoints": 10})
    patches = PatchDataset(cache / "default_patches_x4.h5", augment=False)
    task = build_flow_task(_fresh_model(config), config, validation_items(None, patches, 1, 4),
                           tmp_path)
    task.validate = lambda step: {"val_nll_bpd": {2: 1.0, 4: 3.0, 6: 2.0}[step]}
    run_loop(task, loop_settings(config), ProcessInfo(0, 1, torch.device("cpu")), patches, tmp_path)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["training"]["step"] == 2 and best["training"]["best"] == 1.0


def _fresh_model(config):
    torch.manual_seed(config.seed)
    return SRFlow.from_preset(config.preset)


def test_pretraining_lowers_l1_and_feeds_train(env_cache, tmp_path):
    config = resolve(
        PretrainConfig,
        cli={**SMALL, "iterations": 100, "val_every": 100, "checkpoint_every": 100,
             "out": str(tmp_path / "pre")},
    )
    result = pretrain(config)
    loss = losses(result.out)
    first, last = [loss[s] for s in range(1, 11)], [loss[s] for s in range(91, 101)]
    assert sum(last) < 0.8 * sum(first), (first, last)
    val = [r for r in read_metrics(result.out / "metrics.jsonl") if "val_l1" in r]
    assert val and val[-1]["val_psnr"] > 15
    encoder = {k: v.clone() for k, v in result.model.encoder.state_dict().items()}

    flow_config = resolve(
        TrainConfig,
        cli={**SMALL, "iterations": 4, "encoder": str(result.out / "best.pt"),
             "out": str(tmp_path / "flow")},
    )
    trained = train(flow_config, stop_at=2)  # frozen for the first 0.5 * 4 steps
    for name, value in trained.model.encoder.state_dict().items():
        assert torch.equal(value, encoder[name]), name
    checkpoint = cinn_sr.load_checkpoint(trained.out / "last.pt")
    assert checkpoint["kind"] == "train" and checkpoint["training"]["step"] == 2


def test_cli_train_first_run_refuses_reuse_and_resumes(env_cache, tmp_path):
    out, val = tmp_path / "run", tmp_path / "val"
    photo = dict(sample_photos())["coffee"]
    write_image(val / "coffee_crop.png", photo[100:152, 200:268])  # 68 x 52: padded inside
    args = ["train", "--iterations", "3", "--batch-size", "2", "--val", str(val),
            "--device", "cpu", "--out", str(out)]
    runner = CliRunner()
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"train: 3 steps (0 skipped) in {out}" in result.output
    assert Image.open(out / "samples" / "step_0000003.png").size == (5 * 68, 52)
    again = runner.invoke(main, args)
    assert again.exit_code == 1 and "already holds a run" in again.output
    resumed = runner.invoke(main, [*args[:2], "5", *args[3:], "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert sorted(losses(out)) == [1, 2, 3, 4, 5]
    finished = runner.invoke(main, [*args[:2], "5", *args[3:-2], "--out", str(tmp_path / "b"),
                                    "--resume", str(out / "last.pt")])
    assert finished.exit_code == 1 and "at step 5" in finished.output, finished.output
    assert not (tmp_path / "b").exists()  # was: an empty run folder and a "done" line
    missing = runner.invoke(main, ["train", "--resume", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 1 and "nope.pt" in missing.output


def test_cli_train_with_an_unusable_val_leaves_no_run_folder(env_cache, tmp_path):
    out, val = tmp_path / "run", tmp_path / "empty"
    val.mkdir()
    result = CliRunner().invoke(
        main,
        ["train", "--iterations", "1", "--val", str(val), "--device", "cpu", "--out", str(out)],
    )
    assert result.exit_code == 1 and "no images found" in result.output, result.output
    assert not out.exists()


def test_a_full_preset_on_the_cpu_warns_and_names_the_small_presets():
    import warnings

    from cinn_sr.driver import warn_if_slow_on_cpu

    full = resolve(TrainConfig, cli={"preset": "div2k-4x"})
    model = SRFlow.from_preset("div2k-4x")
    slow = r"div2k-4x \(39.3 M parameters, 200000 steps\) on the CPU takes days"
    with pytest.warns(UserWarning, match=slow):
        warn_if_slow_on_cpu(full, model, torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_slow_on_cpu(full, model, torch.device("cuda"))
        small = resolve(TrainConfig, cli={"preset": "small-4x"})
        warn_if_slow_on_cpu(small, SRFlow.from_preset("small-4x"), torch.device("cpu"))
