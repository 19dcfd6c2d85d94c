import os
import subprocess
import sys
import textwrap

from click.testing import CliRunner

import cinn_sr
from cli import main


def test_version_and_help():
    runner = CliRunner()
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert cinn_sr.__version__ in result.output
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "super-resolution" in result.output


def test_help_and_version_of_every_command_do_not_import_torch():
    """`--help` and `--version` answer without torch's seconds-long import (issue: 3.4 s)."""
    script = textwrap.dedent(
        """
        import sys
        import click
        from click.testing import CliRunner
        import cli

        def paths(command, prefix=()):
            yield prefix
            for name, sub in getattr(command, "commands", {}).items():
                yield from paths(sub, (*prefix, name))

        runner = CliRunner()
        seen = 0
        for path in paths(cli.main):
            result = runner.invoke(cli.main, [*path, "--help"])
            assert result.exit_code == 0 and "Usage:" in result.output, (path, result.output)
            seen += 1
        assert runner.invoke(cli.main, ["--version"]).exit_code == 0
        assert "torch" not in sys.modules, "torch was imported"
        print(seen)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 14  # main, pack, train, pretrain, sample, eval, edit *, ...


def test_train_out_under_a_file_is_a_one_line_error(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("CINN_SR_CACHE", str(cache))  # packed already: no progress bar
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(
        main, ["train", "--out", str(blocker / "run"), "--iterations", "1", "--device", "cpu"]
    )
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.output.startswith("Error: ") and "file" in result.output


def test_convert_out_under_a_file_is_a_one_line_error(tmp_path):
    source = cinn_sr.save_checkpoint(tmp_path / "tiny.pt", cinn_sr.SRFlow.from_preset("tiny-4x"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["convert", str(source), "--out", str(blocker / "x.pt")])
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.output.startswith("Error: ")


def test_library_warnings_print_as_one_line(tmp_path):
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    folder = tmp_path / "hr"
    folder.mkdir()
    Image.fromarray(np.full((16, 16, 4), 200, np.uint8)).save(folder / "rgba.png")
    done = subprocess.run(
        [sys.executable, "-m", "cli", "eval", "--sr", str(folder), str(folder), "--scale", "4"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warning: rgba.png: alpha channel dropped" in done.stderr
    assert "UserWarning" not in done.stderr and ".py:" not in done.stderr


def test_train_usage_errors_found_after_parsing_exit_2(tmp_path):
    cases = [
        (["--resume"], "--resume without a checkpoint needs --out DIR"),
        (["--device", "tpu"], "command line: 'device' must be auto, cpu, cuda or cuda:N"),
        (["--batch-size", "3", "--nproc", "2"], "'batch_size' must be divisible by nproc (2)"),
    ]
    for command in ("train", "pretrain"):
        for args, message in cases:
            result = CliRunner().invoke(main, [command, *args, "--iterations", "1"])
            assert result.exit_code == 2, (args, result.output)
            last = result.output.strip().splitlines()[-1]
            assert last.startswith("Error: ") and message in last, (args, last)
    bad = tmp_path / "bad.toml"
    bad.write_text('device = "tpu"\n')
    result = CliRunner().invoke(main, ["train", "--config", str(bad)])
    assert result.exit_code == 1 and f"{bad}: 'device'" in result.output  # a file's error


def test_the_defaults_help_shows_are_the_librarys():
    """cli.py writes its shown defaults out (importing them would import torch)."""
    import cli
    from cinn_sr.datasets.pack import PATCH_SIZE, PER_IMAGE
    from cinn_sr.lpips import WEIGHTS_FILENAME
    from cinn_sr.model import DEFAULT_TEMPERATURE
    from cinn_sr.sampling import SAMPLE_TEMPERATURE

    def option(command, name):
        return next(p for p in command.params if p.name == name)

    pack = main.commands["pack"]
    assert option(pack, "patch").default == PATCH_SIZE
    assert f"[default: {PER_IMAGE}]" in option(pack, "per_image").help
    assert cli.SAMPLE_TEMPERATURE == SAMPLE_TEMPERATURE
    assert f"default {SAMPLE_TEMPERATURE}" in option(main.commands["sample"], "temperatures").help
    assert option(main.commands["eval"], "temperature").default == DEFAULT_TEMPERATURE
    assert option(main.commands["edit"].commands["resample"], "temperature").default == (
        DEFAULT_TEMPERATURE
    )
    assert WEIGHTS_FILENAME in option(main.commands["lpips-weights"], "out").help
