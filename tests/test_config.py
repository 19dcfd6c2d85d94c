"""Run configuration: resolution order, TOML round trip, one-line errors naming the key."""

import math

import pytest
from click.testing import CliRunner

from cinn_sr.config import (
    GAUSSIAN_NOISE_SIGMA,
    ConfigError,
    PretrainConfig,
    TrainConfig,
    read_toml,
    resolve,
    to_toml_dict,
    write_toml,
)
from cli import main


def test_full_preset_recipe_is_the_papers():
    config = resolve(TrainConfig, cli={"preset": "div2k-4x"})
    assert (config.lr, config.betas, config.weight_decay) == (5e-4, (0.9, 0.999), 0.0)
    assert config.iterations == 200_000 and config.batch_size == 12
    assert config.lr_milestones == (0.5, 0.75, 0.9, 0.95) and config.lr_gamma == 0.5
    assert config.noise == "gaussian" and config.freeze_encoder_fraction == 0.5
    assert math.isclose(GAUSSIAN_NOISE_SIGMA * 255, 4 / math.sqrt(3))
    assert resolve(TrainConfig, cli={"preset": "div2k-8x"}).batch_size == 16
    pre = resolve(PretrainConfig, cli={"preset": "celeba-8x"})
    assert (pre.lr, pre.betas, pre.batch_size, pre.iterations) == (2e-4, (0.9, 0.99), 16, 200_000)
    assert (pre.restart_every, pre.eta_min) == (50_000, 1e-7)


def test_without_data_the_tiny_preset_runs_minutes():
    config = resolve(TrainConfig)
    assert config.preset == "tiny-4x" and config.iterations <= 1000 and config.batch_size <= 8


def test_resolution_order_defaults_preset_file_cli():
    file = {"preset": "tiny-8x", "batch_size": 6, "lr": 1e-3, "seed": 3}
    cli = {"lr": 2e-3, "seed": None}
    config = resolve(TrainConfig, file, cli)
    assert config.preset == "tiny-8x"          # file over default
    assert config.iterations == 300            # tiny recipe over dataclass default
    assert config.batch_size == 6              # file over recipe
    assert config.lr == 2e-3                   # command line over file
    assert config.seed == 3                    # None on the command line = not given
    assert config.noise == "gaussian"          # dataclass default
    assert resolve(TrainConfig, file, {"preset": "tiny-4x"}).preset == "tiny-4x"


def test_resume_base_replaces_defaults_and_recipe():
    base = to_toml_dict(resolve(TrainConfig, cli={"iterations": 50, "batch_size": 3}))
    config = resolve(TrainConfig, {"iterations": 80}, {"val_every": 7}, base=base)
    assert (config.iterations, config.batch_size, config.val_every) == (80, 3, 7)


def test_toml_round_trip_and_hyphenated_keys(tmp_path):
    config = resolve(TrainConfig, {"batch-size": 5, "model": {"scale_fn": "softclamp"}})
    assert config.batch_size == 5 and config.model == {"scale_fn": "softclamp"}
    write_toml(config, tmp_path / "config.toml")
    again = resolve(TrainConfig, read_toml(tmp_path / "config.toml"))
    assert again == config


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"batch_sz": 4}, "unknown key 'batch_sz'"),
        ({"batch_size": "four"}, "'batch_size' must be an integer, got 'four'"),
        ({"batch_size": 0}, "'batch_size' must be >= 1"),
        ({"seed": 10**23}, "'seed' must be < 2**32"),
        ({"noise": "pink"}, "'noise' must be one of gaussian, uniform, none"),
        ({"betas": [0.9]}, "'betas' must be a list of 2 numbers"),
        ({"lr_milestones": [0.75, 0.5]}, "'lr_milestones' must be increasing fractions"),
        ({"freeze_encoder_fraction": 2}, "'freeze_encoder_fraction' must be in [0, 1]"),
        ({"preset": "huge"}, "'preset' must be one of"),
        ({"device": "tpu"}, "'device' must be auto, cpu, cuda or cuda:N"),
        ({"model": {"K2": 3}}, "unknown key 'model.K2'"),
        ({"batch_size": 5, "nproc": 2}, "'batch_size' must be divisible by nproc (2)"),
        ({"init": "a.pt", "encoder": "b.pt"}, "'encoder' cannot be combined with init"),
        ({"model": {"scale_fn": "tanh"}}, "bad [model] table: scale_fn must be one of"),
        ({"lr": float("nan")}, "'lr' must be a finite number, got nan"),
        ({"weight_decay": float("inf")}, "'weight_decay' must be a finite number, got inf"),
        ({"betas": [0.9, float("nan")]}, "'betas' must be a finite number"),
        ({"model": {"hidden": 16.5}}, "bad [model] table: hidden must be an integer, got 16.5"),
        ({"model": {"clamp": float("nan")}}, "clamp must be a finite number, got nan"),
        ({"model": {"K": True}}, "K must be an integer, got True"),
        ({"model": {"stack_blocks": [0, 1.5]}}, "stack_blocks must be a list of integers"),
        ({"model": {"split_every_level": 1}}, "split_every_level must be true or false"),
    ],
)
def test_bad_keys_and_values_are_one_line_errors_naming_them(layer, message):
    with pytest.raises(ConfigError) as error:
        resolve(TrainConfig, layer, file_name="run.toml")
    text = str(error.value)
    assert message in text and text.startswith("run.toml: ") and "\n" not in text


def test_pretrain_keys_are_not_train_keys():
    with pytest.raises(ConfigError, match="unknown key 'encoder'"):
        resolve(PretrainConfig, {"encoder": "x.pt"})
    with pytest.raises(ConfigError, match="'eta_min' must be in"):
        resolve(PretrainConfig, {"eta_min": 1.0})


def test_cli_reports_config_errors_in_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('batch_size = 4\nnoize = "none"\n')
    result = CliRunner().invoke(main, ["train", "--config", str(bad)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {bad}: unknown key 'noize' (known: " + result.output.split("(known: ")[1].strip()
    ]
    broken = tmp_path / "broken.toml"
    broken.write_text("batch_size = \n")
    result = CliRunner().invoke(main, ["pretrain", "--config", str(broken)])
    assert result.exit_code == 1 and "invalid TOML" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"lr = 1e-3\n\xff\xfe\n")
    result = CliRunner().invoke(main, ["train", "--config", str(binary)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {binary}: not a UTF-8 text file (TOML is UTF-8)"
    ]


def test_a_checkpoint_config_of_the_wrong_kind_names_file_and_field(tmp_path):
    import torch

    import cinn_sr

    path = cinn_sr.save_checkpoint(tmp_path / "m.pt", cinn_sr.SRFlow.from_preset("tiny-4x"))
    payload = torch.load(path, weights_only=True)
    payload["config"]["hidden"] = 16.5
    torch.save(payload, path)
    with pytest.raises(cinn_sr.CheckpointError) as error:
        cinn_sr.load(path)
    assert str(error.value) == f"{path}: invalid model config (hidden must be an integer, got 16.5)"


def test_a_patch_file_picks_the_full_preset_of_its_scale(tmp_path):
    from cinn_sr.datasets import sample_photo_paths
    from cinn_sr.datasets.pack import pack_images

    photo = dict(sample_photo_paths())["coffee"]
    path = tmp_path / "x8.h5"
    pack_images([photo], path, scale=8, patch=32, per_image=2, progress=False)
    config = resolve(TrainConfig, cli={"data": str(path)})
    assert config.preset == "div2k-8x" and config.batch_size == 16
    assert config.iterations == 200_000
    with pytest.raises(ConfigError, match="patch file: "):
        resolve(TrainConfig, cli={"data": str(tmp_path / "missing.h5")})
