"""Unreadable or too small images in `eval` and in a `--val` folder: skipped and named (eval)
or one line naming the file (train), never a traceback, no run folder left behind."""

import json

import pytest
import torch
from click.testing import CliRunner
from datasets_helpers import write_png_bomb
from PIL import Image

import cinn_sr
from cinn_sr.datasets import imresize, sample_photos, write_image
from cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    photo = dict(sample_photos())["coffee"][:64, :64]
    hr = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255
    model = cinn_sr.SRFlow.from_preset("tiny-4x")
    model.initialize(imresize(hr, 1 / 4), hr)
    return cinn_sr.save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", model)


def bad_images(folder):
    """A text file named .png, a 3 x 2 image (smaller than the scale), a decompression bomb."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.png").write_text("not an image")
    Image.new("RGB", (3, 2)).save(folder / "small.png")
    write_png_bomb(folder / "bomb.png")


def last_line(result) -> str:
    return result.output.strip().splitlines()[-1].rsplit("\r", 1)[-1]


def test_eval_skips_unreadable_hr_images_and_scores_the_rest(tmp_path, checkpoint):
    hr = tmp_path / "hr"
    bad_images(hr)
    write_image(hr / "chelsea.png", dict(sample_photos())["chelsea"][:64, :64])
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(
        main, ["eval", str(checkpoint), str(hr), "--psnr", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "chelsea" in result.output and "Traceback" not in result.output
    skipped = next(line for line in result.output.splitlines() if line.startswith("skipped"))
    assert skipped.startswith("skipped 3 unreadable HR images: bomb.png: too large")
    assert "notes.png: not a recognised image file" in skipped
    assert "small.png: smaller than the scale 4" in skipped
    scores = json.loads(out.read_text())
    assert [image["name"] for image in scores["images"]] == ["chelsea"]
    assert len(scores["skipped"]) == 3

    only_bad = tmp_path / "bad"
    bad_images(only_bad)
    for args in (["eval", str(checkpoint), str(only_bad)],
                 ["eval", "--sr", str(only_bad), str(only_bad), "--scale", "4"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert last_line(result).startswith("Error: no readable HR image: bomb.png")


@pytest.mark.parametrize("name", ["notes.png", "small.png", "bomb.png"])
def test_a_bad_image_in_a_val_folder_is_one_line_and_no_run_folder(
    tmp_path, cache, monkeypatch, name
):
    monkeypatch.setenv("CINN_SR_CACHE", str(cache))
    val = tmp_path / "val"
    bad_images(tmp_path / "all")
    val.mkdir()
    (tmp_path / "all" / name).rename(val / name)
    write_image(val / "a.png", dict(sample_photos())["chelsea"][:64, :64])
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["train", "--val", str(val), "--iterations", "1", "--out", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert last_line(result).startswith(f"Error: val: {name}: ")
    assert not out.exists()
