"""`cinn-sr edit resample|style|content|restore` on a saved tiny checkpoint and real photos."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from flow_helpers import randomise_output_layers
from PIL import Image

from cinn_sr import SRFlow, save_checkpoint
from cinn_sr.datasets import imresize, read_image, sample_photos, write_image
from cli import main


def _as_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny-4x checkpoint (ActNorms initialised on a photo, output convs random so that
    every block acts), 64 x 64 photo crops, their 16 x 16 LR and a grayscale mask."""
    folder = tmp_path_factory.mktemp("edit")
    photos = dict(sample_photos())
    crops = {
        "image": photos["chelsea"][60:124, 150:214],
        "pasted": photos["coffee"][100:164, 200:264],
    }
    torch.manual_seed(0)
    model = SRFlow.from_preset("tiny-4x")
    hr = _as_tensor(crops["image"])
    model.initialize(imresize(hr, 1 / 4), hr)
    randomise_output_layers(model)
    paths = {"ckpt": folder / "tiny.pt"}
    save_checkpoint(paths["ckpt"], model)
    for name, pixels in crops.items():
        paths[name] = folder / f"{name}.png"
        write_image(paths[name], pixels)
        paths[f"{name}_lr"] = folder / f"{name}_lr.png"
        write_image(paths[f"{name}_lr"], imresize(pixels, 1 / 4))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 24:48] = 255
    paths["mask"] = folder / "mask.png"
    Image.fromarray(mask, mode="L").save(paths["mask"])
    paths["small_mask"] = folder / "small_mask.png"
    Image.fromarray(mask[:32], mode="L").save(paths["small_mask"])
    paths["odd"] = folder / "odd.png"
    write_image(paths["odd"], crops["image"][:62])
    return {k: str(v) for k, v in paths.items()}


def _edit(*args: str):
    return CliRunner().invoke(main, ["edit", *args, "--device", "cpu"])


def test_resample_redraws_the_masked_region(files, tmp_path):
    out = tmp_path / "resampled.png"
    result = _edit("resample", files["ckpt"], files["image_lr"], files["image"], files["mask"],
                   "--out", str(out), "--temperature", "0.9", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "64x64" in result.output
    edited, original = read_image(out).astype(int), read_image(files["image"]).astype(int)
    assert edited.shape == original.shape
    assert np.abs(edited - original)[16:40, 24:48].mean() > 2
    again = tmp_path / "again.png"
    _edit("resample", files["ckpt"], files["image_lr"], files["image"], files["mask"],
          "--out", str(again), "--temperature", "0.9", "--seed", "3")
    assert np.array_equal(read_image(again), read_image(out))


def test_style_onto_its_own_lr_gives_back_the_source(files, tmp_path):
    out = tmp_path / "style.png"
    result = _edit("style", files["ckpt"], files["image"], files["image_lr"], "--out", str(out))
    assert result.exit_code == 0, result.output
    assert np.abs(read_image(out).astype(int) - read_image(files["image"]).astype(int)).max() <= 1
    other = tmp_path / "other.png"
    result = _edit("style", files["ckpt"], files["image"], files["pasted_lr"],
                   "--source-lr", files["image_lr"], "--out", str(other))
    assert result.exit_code == 0, result.output
    assert not np.array_equal(read_image(other), read_image(out))


def test_content_and_restore_write_images_of_the_hr_size(files, tmp_path):
    content = tmp_path / "content.png"
    result = _edit("content", files["ckpt"], files["image_lr"], files["image"], files["pasted"],
                   files["mask"], "--out", str(content), "--temperature", "0.8", "--mode", "local")
    assert result.exit_code == 0, result.output
    assert read_image(content).shape == (64, 64, 3)
    restored = tmp_path / "restored.png"
    result = _edit("restore", files["ckpt"], files["pasted"], "--out", str(restored),
                   "--mode", "global", "--temperature", "0.5")
    assert result.exit_code == 0, result.output
    assert read_image(restored).shape == (64, 64, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("resample", "{ckpt}", "{image_lr}", "{image}", "{small_mask}"),
         "MASK {small_mask} is 32x64 but LR {image_lr} (16x16) at the checkpoint's 4x needs 64x64"),
        (("content", "{ckpt}", "{image_lr}", "{image}", "{image_lr}", "{mask}"),
         "PASTED {image_lr} is 16x16 but LR {image_lr} (16x16)"),
        (("style", "{ckpt}", "{image}", "{image}"),
         "SOURCE_HR {image} is 64x64 but TARGET_LR {image} (64x64) at the checkpoint's 4x "
         "needs 256x256"),
        (("restore", "{ckpt}", "{odd}"),
         "62x64 is not a multiple of the scale 4: crop it or give its LR"),
        (("restore", "{ckpt}", "{image}", "--lr", "{image}"), "needs 256x256"),
    ],
)
def test_sizes_that_do_not_fit_are_one_line_usage_errors(files, tmp_path, args, message):
    result = _edit(*(a.format(**files) for a in args), "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error: ") and message.format(**files) in error
    assert not (tmp_path / "x.png").exists()


def test_an_unreadable_image_is_a_one_line_error(files, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    result = _edit("restore", files["ckpt"], str(broken), "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [result.output.strip().splitlines()[-1]]
    assert "broken.png" in result.output


def test_bad_device_temperature_and_output_are_one_line_errors(files, tmp_path):
    base = ["restore", files["ckpt"], files["image"]]
    cases = [
        (["--out", str(tmp_path / "x.png"), "--device", "nonsense"], 2, "nonsense"),
        (["--out", str(tmp_path / "x.png"), "--temperature", "nan"], 2, "finite"),
        (["--out", files["mask"] + "/x.png"], 1, "mask.png"),
    ]
    for args, code, word in cases:
        result = CliRunner().invoke(main, ["edit", *base, *args])
        assert result.exit_code == code, (args, result.output, result.exception)
        assert isinstance(result.exception, SystemExit), (args, result.exception)
        assert word in result.output.strip().splitlines()[-1]
    assert not (tmp_path / "x.png").exists()


def test_an_rgba_input_gives_a_one_line_warning(files, tmp_path):
    rgba = tmp_path / "rgba.png"
    pixels = read_image(files["image"])
    Image.fromarray(np.dstack([pixels, np.full(pixels.shape[:2], 200, np.uint8)])).save(rgba)
    result = _edit("restore", files["ckpt"], str(rgba), "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 0, result.output
    assert "warning: rgba.png: alpha channel dropped" in result.output
    assert "UserWarning" not in result.output and "edit_files.py" not in result.output


def test_an_empty_mask_is_refused_and_a_colour_mask_is_warned_about(files, tmp_path):
    empty, red = tmp_path / "empty.png", tmp_path / "red.png"
    Image.fromarray(np.zeros((64, 64), np.uint8), mode="L").save(empty)
    colour = np.zeros((64, 64, 3), np.uint8)
    colour[16:40, 24:48, 0] = 255  # painted red: its grey mean (85) would select nothing
    Image.fromarray(colour).save(red)
    for command in (("resample", files["ckpt"], files["image_lr"], files["image"]),
                    ("content", files["ckpt"], files["image_lr"], files["image"], files["image"])):
        result = _edit(*command, str(empty), "--out", str(tmp_path / "x.png"))
        assert result.exit_code == 2, result.output
        last = result.output.strip().splitlines()[-1]
        assert "empty.png: no pixel of the mask is above 127" in last
        assert not (tmp_path / "x.png").exists()
    out = tmp_path / "red_edit.png"
    result = _edit("resample", files["ckpt"], files["image_lr"], files["image"], str(red),
                   "--out", str(out), "--temperature", "0.9")
    assert result.exit_code == 0, result.output
    assert (
        "warning: red.png: the mask is not grey; inside is where any channel is above 127"
        in result.output
    )
    same = tmp_path / "grey_edit.png"
    _edit("resample", files["ckpt"], files["image_lr"], files["image"], files["mask"],
          "--out", str(same), "--temperature", "0.9")
    assert np.array_equal(read_image(out), read_image(same))  # the red region is the grey one
