"""Sampling: tiled decoding agrees with whole-image decoding, seeds reproduce, the noise is a
function of the position (not of the tiling), tiled outputs are written strip by strip as
uint8, `cinn-sr sample` handles odd sizes, grayscale and RGBA inputs."""

import copy
import io

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cinn_sr
from cinn_sr.datasets import PngRowWriter, imresize, sample_photos
from cinn_sr.metrics import psnr
from cinn_sr.sampling import (
    BlockNoise,
    decode_tiled,
    draw_noise,
    sample_files,
    super_resolve,
    tile_windows,
)
from cli import main


def tiny_model() -> cinn_sr.SRFlow:
    """tiny-4x, ActNorms initialised on real photo patches, zero-initialised output convs given
    small random weights so that the condition and the neighbourhood shape every sample."""
    torch.manual_seed(0)
    crops = [photo[100:164, 100:164] for _, photo in sample_photos()[:4]]
    hr = torch.stack([torch.from_numpy(c.copy()).permute(2, 0, 1) for c in crops]).float() / 255
    model = cinn_sr.SRFlow.from_preset("tiny-4x")
    model.initialize(imresize(hr, 1 / 4), hr)
    with torch.no_grad():
        for name, parameter in model.flow.named_parameters():
            if not name.endswith("logs") and torch.count_nonzero(parameter) == 0:
                parameter.normal_(0, 0.03)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def lr_image() -> torch.Tensor:
    """An odd-sized real LR image, [1, 3, 45, 53]."""
    photo = sample_photos()[0][1][:180, :212]
    lr = imresize(torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255, 1 / 4)
    return lr[..., :45, :53]


def test_tiles_cover_the_image_on_the_latent_grid():
    windows = tile_windows(45, tile=15, overlap=5, multiple=2)
    assert [(w.core_start, w.core_stop) for w in windows] == [(0, 16), (16, 32), (32, 45)]
    assert [(w.start, w.stop) for w in windows] == [(0, 22), (10, 38), (26, 45)]
    assert all(w.start % 2 == 0 for w in windows)


def test_tiled_decoding_matches_whole_image(model, lr_image):
    noise = draw_noise(model, 45, 53, 2, torch.Generator().manual_seed(1))
    latents = [0.9 * eps for eps in noise]
    with torch.no_grad():
        whole = model.decode(lr_image, latents)
        other_lr = model.decode(lr_image.flip(-1), latents)
    tiled = decode_tiled(model, lr_image, latents, tile=24, overlap=12)
    assert tiled.shape == whole.shape == (2, 3, 180, 212)
    assert psnr(other_lr[0].clamp(0, 1), whole[0].clamp(0, 1)) < 30  # the condition matters
    for index in range(2):
        assert psnr(tiled[index].clamp(0, 1), whole[index].clamp(0, 1)) >= 45


def test_noise_is_a_function_of_the_position_not_of_the_tiling(model):
    noise = BlockNoise.for_image(model, 45, 53, 2, torch.Generator().manual_seed(7))
    whole = noise.whole()
    assert [tuple(z.shape[1:]) for z in whole] == model.latent_shapes(180, 212)
    assert whole[0].shape[0] == 2 and not torch.equal(whole[0][0], whole[0][1])
    assert [z.shape for z in draw_noise(model, 45, 53, 2, torch.Generator().manual_seed(7))] == [
        z.shape for z in whole
    ]
    padded_h, padded_w = 46, 54  # the model's padding to the coarsest grid (2)
    for tile, overlap in ((12, 4), (24, 12), (40, 2)):
        for rows in tile_windows(45, tile, overlap, 2):
            for cols in tile_windows(53, tile, overlap, 2):
                for z, crop in zip(whole, noise.window(rows, cols), strict=True):
                    top = rows.start * z.shape[-2] // padded_h
                    left = cols.start * z.shape[-1] // padded_w
                    expected = z[..., top : top + crop.shape[-2], left : left + crop.shape[-1]]
                    assert torch.equal(crop, expected)
    # a larger image draws the same eps at the same positions (the padding included)
    larger = BlockNoise.for_image(model, 64, 70, 2, torch.Generator().manual_seed(7)).whole()
    for small, big in zip(whole, larger, strict=True):
        assert torch.equal(small, big[..., : small.shape[-2], : small.shape[-1]])
    other = BlockNoise.for_image(model, 45, 53, 2, torch.Generator().manual_seed(8)).whole()
    assert not torch.equal(other[0], whole[0])


def test_tiled_super_resolve_matches_whole_image_with_a_temperature_map(model, lr_image):
    relative = torch.linspace(0, 1, 212).expand(180, 212)[None, None].contiguous()
    generator = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    whole = super_resolve(model, lr_image, [0.8], 2, generator(), temperature_map=relative)[0.8]
    tiled = super_resolve(model, lr_image, [0.8], 2, generator(), tile=16, overlap=12,
                          temperature_map=relative)[0.8]
    assert tiled.shape == whole.shape == (2, 3, 180, 212)
    for index in range(2):
        assert psnr(tiled[index], whole[index]) >= 45
    constant = super_resolve(model, lr_image, [0.8], 2, generator(), tile=16, overlap=12)[0.8]
    assert psnr(constant[0], tiled[0]) < 45  # the map matters


def test_strip_writing_equals_rounding_the_float_assembly(model, tmp_path, lr_image):
    lr = lr_image[..., :37, :29]
    rgb = np.floor(lr[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    summary = sample_files(model, [tmp_path / "rgb.png", tmp_path / "gray.png"], tmp_path / "o",
                           [0.8, 0.5], n=2, seed=4, tile=8, overlap=4, progress=False)
    assert len(summary.written) == 8 and not summary.nonfinite
    for stem, image in (("rgb", rgb), ("gray", np.dstack([rgb[..., 0]] * 3))):
        lr_read = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
        floats = super_resolve(model, lr_read, [0.8, 0.5], 2, torch.Generator().manual_seed(4),
                               tile=8, overlap=4)
        for temperature, batch in floats.items():
            for index, sr in enumerate(batch):
                expected = np.floor(sr.permute(1, 2, 0).double().numpy() * 255 + 0.5)
                expected = expected.astype(np.uint8)
                if stem == "gray":
                    expected = np.floor(expected.mean(axis=2) + 0.5).astype(np.uint8)
                with Image.open(tmp_path / "o" / f"{stem}_t{temperature:g}_s{index}.png") as png:
                    assert np.array_equal(np.array(png), expected)


def test_a_tiled_nonfinite_sample_is_reported_and_not_written(model, tmp_path, lr_image):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        next(p for n, p in broken.flow.named_parameters() if n.endswith("bias")).fill_(float("nan"))
    checkpoint = cinn_sr.save_checkpoint(tmp_path / "nan.pt", broken)
    rgb = np.floor(lr_image[0, :, :21, :27].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "lr.png")
    result = CliRunner().invoke(main, [
        "sample", str(checkpoint), str(tmp_path / "lr.png"), "--out", str(tmp_path / "o"),
        "--device", "cpu", "--tile", "8", "--tile-overlap", "4", "--samples", "2",
    ])
    assert result.exit_code == 1, result.output
    assert "wrote 0 images" in result.output and "lr_t0.7_s1.png (100.0 %)" in result.output
    assert "2 of 2 samples had NaN/inf pixels" in result.output
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_png_rows_written_in_bands_read_back_exactly():
    rng = np.random.default_rng(0)
    for shape in ((37, 53, 3), (30, 41), (20, 9, 4), (1, 1, 3), (70, 65, 2)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        channels = 1 if image.ndim == 2 else shape[2]
        handle = io.BytesIO()
        writer = PngRowWriter(handle, shape[1], shape[0], channels)
        for start, stop in ((0, 5), (5, 5), (5, 20), (20, shape[0])):
            writer.write(image[min(start, shape[0]) : min(stop, shape[0])])
        writer.close()
        with Image.open(handle) as png:
            assert np.array_equal(np.array(png), image), shape
    with pytest.raises(ValueError, match="rows were written"):
        PngRowWriter(io.BytesIO(), 4, 4, 3).close()


def test_seed_reproduces_and_temperature_zero_is_the_mode(model, lr_image):
    lr = lr_image[..., :20, :22]
    first = super_resolve(model, lr, [0.0, 0.8], n=2, generator=torch.Generator().manual_seed(5))
    again = super_resolve(model, lr, [0.8], n=2, generator=torch.Generator().manual_seed(5))
    other = super_resolve(model, lr, [0.8], n=2, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first[0.8], again[0.8])
    assert not torch.equal(first[0.8], other[0.8])
    assert not torch.equal(first[0.8][0], first[0.8][1])
    assert torch.equal(first[0.0][0], first[0.0][1])
    assert first[0.8].shape == (2, 3, 80, 88) and 0 <= first[0.8].min() and first[0.8].max() <= 1


def test_cli_sample_odd_gray_and_rgba_inputs(model, tmp_path, lr_image):
    checkpoint = cinn_sr.save_checkpoint(tmp_path / "tiny.pt", model)
    inputs = tmp_path / "lr"
    inputs.mkdir()
    rgb = np.floor(lr_image[0, :, :21, :27].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(rgb).save(inputs / "odd.png")
    Image.fromarray(rgb[..., 1]).save(inputs / "gray.png")
    alpha = np.tile(np.linspace(0, 255, 27).astype(np.uint8), (21, 1))
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    args = ["sample", str(checkpoint), str(inputs), str(tmp_path / "rgba.png"), "--device", "cpu"]
    args += ["--temperature", "0.7", "--temperature", "0", "--samples", "2", "--seed", "3"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert (
        "wrote 12 images" in result.output
        and "(3 inputs x 2 temperatures (0.7, 0) x 2 samples)" in result.output
    )
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(
        f"{stem}_t{t}_s{i}.png"
        for stem in ("odd", "gray", "rgba")
        for t in ("0.7", "0")
        for i in (0, 1)
    )
    with Image.open(tmp_path / "a" / "odd_t0.7_s1.png") as image:
        assert image.mode == "RGB" and image.size == (108, 84)
    with Image.open(tmp_path / "a" / "gray_t0_s0.png") as image:
        assert image.mode == "L" and image.size == (108, 84)
    with Image.open(tmp_path / "a" / "rgba_t0.7_s0.png") as image:
        assert image.mode == "RGBA" and image.size == (108, 84)
        assert np.array_equal(np.array(image)[..., 3], imresize(alpha, 4))
    tiled = CliRunner().invoke(
        main, [*args, "--out", str(tmp_path / "b"), "--tile", "12", "--tile-overlap", "8"]
    )
    assert tiled.exit_code == 0, tiled.output
    for name in ("odd_t0.7_s0.png", "gray_t0.7_s1.png"):
        same = [np.array(Image.open(tmp_path / run / name)) for run in ("a", "b")]
        assert psnr(same[0], same[1]) > 40


def test_cli_sample_errors_are_one_line(model, tmp_path):
    checkpoint = cinn_sr.save_checkpoint(tmp_path / "tiny.pt", model)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    result = CliRunner().invoke(
        main,
        ["sample", str(checkpoint), str(broken), "--out", str(tmp_path / "o"), "--device", "cpu"],
    )
    assert (
        result.exit_code == 1 and "broken.png" in result.output and "Traceback" not in result.output
    )
    not_a_model = CliRunner().invoke(
        main, ["sample", str(broken), str(broken), "--out", str(tmp_path / "o")]
    )
    assert not_a_model.exit_code == 1 and "Traceback" not in not_a_model.output


def test_cli_sample_skips_and_names_unreadable_files(model, tmp_path, lr_image):
    checkpoint = cinn_sr.save_checkpoint(tmp_path / "tiny.pt", model)
    folder = tmp_path / "lr"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    rgb = np.floor(lr_image[0, :, :12, :12].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "good.png")
    result = CliRunner().invoke(
        main,
        ["sample", str(checkpoint), str(folder), "--out", str(tmp_path / "o"), "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 1 image " in result.output and "(1 input x" in result.output
    assert "skipped 1 unreadable input" in result.output and "broken.png" in result.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["good_t0.7_s0.png"]


def test_cli_sample_bad_device_temperature_and_output_are_one_line_errors(model, tmp_path):
    checkpoint = cinn_sr.save_checkpoint(tmp_path / "tiny.pt", model)
    lr = tmp_path / "lr.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(lr)
    base = ["sample", str(checkpoint), str(lr)]
    cases = [
        (["--out", str(tmp_path / "o"), "--device", "nonsense"], 2, "nonsense"),
        (["--out", str(tmp_path / "o"), "--temperature", "nan"], 2, "finite"),
        (["--out", str(tmp_path / "o"), "--temperature", "inf"], 2, "finite"),
        (["--out", str(tmp_path / "o"), "--seed", str(10**23)], 2, "--seed"),
        (["--out", str(lr / "sub"), "--device", "cpu"], 1, "lr.png"),
    ]
    for args, code, word in cases:
        result = CliRunner().invoke(main, base + args)
        assert result.exit_code == code, (args, result.output, result.exception)
        assert isinstance(result.exception, SystemExit), (args, result.exception)
        assert word in result.output.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["sample", "edit", "eval"])
def test_cli_refuses_a_model_with_an_untrained_flow(tmp_path, command):
    """A `pretrain` checkpoint (encoder only, ActNorms never initialised): one-line error,
    nothing written (`edit restore` would otherwise initialise the ActNorms on its input)."""
    model = cinn_sr.SRFlow.from_preset("tiny-4x")
    checkpoint = str(cinn_sr.save_checkpoint(tmp_path / "pre.pt", model))
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    out = tmp_path / "out.png"
    args = {
        "sample": ["sample", checkpoint, str(image), "--out", str(tmp_path / "o")],
        "edit": ["edit", "restore", checkpoint, str(image), "--out", str(out)],
        "eval": ["eval", checkpoint, str(tmp_path)],
    }[command]
    result = CliRunner().invoke(main, [*args, "--device", "cpu"])
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "untrained" in result.output.strip().splitlines()[-1]
    assert not out.exists() and not (tmp_path / "o").exists()
