"""Checkpoints: weights + config in one file, rebuilt from the path alone; one-line errors."""

import pytest
import torch

import cinn_sr
from cinn_sr import CheckpointError, SRFlow, load, load_checkpoint, save_checkpoint


@pytest.fixture
def trained():
    """A tiny-8x model with a non-default option, one optimiser step in."""
    torch.manual_seed(0)
    model = SRFlow.from_preset("tiny-8x", invconv="full", scale_fn="softclamp", clamp=1.5)
    lr, hr = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 32, 32)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    model.nll(lr, hr).mean().backward()
    optimizer.step()
    return model, optimizer, lr, hr


def test_round_trip_rebuilds_the_same_model(trained, tmp_path):
    model, optimizer, lr, hr = trained
    path = save_checkpoint(tmp_path / "run" / "last.pt", model, step=7,
                           optimizer=optimizer.state_dict())
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left

    loaded = load(path)
    assert loaded.config == model.config
    assert not loaded.training
    assert loaded.is_initialized
    with torch.no_grad():
        torch.testing.assert_close(loaded.nll(lr, hr), model.nll(lr, hr), rtol=0, atol=0)
    g = torch.Generator()
    torch.testing.assert_close(
        loaded.sample(lr, 0.7, n=2, generator=g.manual_seed(1)),
        model.sample(lr, 0.7, n=2, generator=g.manual_seed(1)),
        rtol=0, atol=0,
    )

    payload = load_checkpoint(path)
    assert payload["format"] == "cinn-sr" and payload["step"] == 7
    optimizer.load_state_dict(payload["optimizer"])
    assert cinn_sr.load is load


def test_a_checkpoint_of_another_preset_is_refused(trained, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", trained[0])
    with pytest.raises(CheckpointError) as info:
        load(path, preset="tiny-4x")
    message = str(info.value)
    assert "\n" not in message and "tiny-8x" in message and "tiny-4x" in message


def test_weights_that_do_not_fit_the_config_are_refused(trained, tmp_path):
    model = trained[0]
    payload = {"format": "cinn-sr", "version": 1,
               "config": model.config.replace(K=3).to_dict(), "model": model.state_dict()}
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="do not fit") as info:
        load(tmp_path / "edited.pt")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "missing", "other dict", "bad config"])
def test_unreadable_files_give_one_line_errors(trained, tmp_path, kind):
    path = tmp_path / "ckpt.pt"
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint at all")
    elif kind == "truncated":
        save_checkpoint(path, trained[0])
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "other dict":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "bad config":
        config = trained[0].config.to_dict() | {"scale": 3}
        torch.save({"format": "cinn-sr", "version": 1, "config": config, "model": {}}, path)
    with pytest.raises(CheckpointError) as info:
        load(path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_extras_may_not_overwrite_the_reserved_keys(trained, tmp_path):
    with pytest.raises(ValueError, match="config"):
        save_checkpoint(tmp_path / "x.pt", trained[0], config={})


def test_a_text_file_is_named_as_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")  # the weights-only unpickler raises KeyError(101) on this
    with pytest.raises(CheckpointError, match="not a file written by torch.save"):
        load(path)


def test_export_keeps_the_model_and_drops_the_training_state(trained, tmp_path):
    from click.testing import CliRunner

    from cinn_sr.checkpoint import export_weights
    from cli import main

    model, optimizer, lr, hr = trained
    full = save_checkpoint(tmp_path / "last.pt", model, step=7, optimizer=optimizer.state_dict())
    plain = export_weights(full, tmp_path / "plain.pt")
    assert sorted(load_checkpoint(plain)) == ["config", "format", "model", "version"]
    assert plain.stat().st_size < full.stat().st_size
    with torch.no_grad():
        torch.testing.assert_close(load(plain).nll(lr, hr), model.nll(lr, hr), rtol=0, atol=0)

    result = CliRunner().invoke(
        main, ["export", str(full), "--out", str(tmp_path / "h.pt"), "--half"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {tmp_path / 'h.pt'} (") and "float16" in result.output
    weights = load_checkpoint(tmp_path / "h.pt")["model"]
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    assert (tmp_path / "h.pt").stat().st_size < 0.6 * plain.stat().st_size
    half = load(tmp_path / "h.pt")
    assert {p.dtype for p in half.parameters()} == {torch.float32}
    g = torch.Generator()
    torch.testing.assert_close(
        half.sample(lr, 0.0, generator=g.manual_seed(1)),
        model.sample(lr, 0.0, generator=g.manual_seed(1)),
        rtol=0, atol=5e-3,
    )

    result = CliRunner().invoke(main, ["export", str(tmp_path / "none.pt"), "--out", "x.pt"])
    assert result.exit_code == 2 and "no such checkpoint file or shipped model" in result.output
