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
