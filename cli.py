"""The `cinn-sr` command line: thin click commands that parse options and call the library."""

import click

import cinn_sr


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(cinn_sr.__version__, prog_name="cinn-sr")
def main() -> None:
    """cinn-sr: conditional invertible networks (SRFlow) for super-resolution."""


if __name__ == "__main__":
    main()
