import os

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


def test_train_out_under_a_file_is_a_one_line_error(tmp_path):
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
