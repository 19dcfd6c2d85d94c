"""`cinn-sr eval`: scoring ready SR folders and checkpoints, JSON/CSV output, errors by name."""

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cinn_sr
from cinn_sr.datasets import imresize, read_image, sample_photos, write_image
from cinn_sr.lpips import WEIGHTS_FILENAME, LPIPSWeightsError, load_lpips
from cinn_sr.metrics import lr_psnr, psnr, ssim
from cli import main


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """HR crops of two photos (one not a multiple of 4) and their bicubic 4x SR images."""
    root = tmp_path_factory.mktemp("eval")
    hr_dir, sr_dir = root / "hr", root / "sr"
    photos = dict(sample_photos())
    crops = {
        "chelsea": photos["chelsea"][40:106, 100:170],
        "coffee": photos["coffee"][:64, 200:280],
    }
    expected = {}
    for name, hr in crops.items():
        hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4] if name == "coffee" else hr
        write_image(hr_dir / f"{name}.png", hr)
        cropped = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
        lr = imresize(cropped, 1 / 4)
        sr = imresize(lr, 4)
        write_image(sr_dir / f"{name}.png", sr)
        expected[name] = {
            "psnr": psnr(sr, cropped, "basicsr", 4),
            "ssim": ssim(sr, cropped, "basicsr", 4),
            "lr_psnr": lr_psnr(sr, lr, 4),
        }
    return hr_dir, sr_dir, expected


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny-4x model whose ActNorms were initialised on a real photo crop."""
    torch.manual_seed(0)
    model = cinn_sr.SRFlow.from_preset("tiny-4x")
    hr = (
        torch.from_numpy(sample_photos()[0][1][:64, :64].copy()).permute(2, 0, 1)[None].float()
        / 255
    )
    model.initialize(imresize(hr, 1 / 4), hr)
    return cinn_sr.save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", model)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_eval_sr_folder_writes_json_csv_and_table(folders, tmp_path):
    hr_dir, sr_dir, expected = folders
    out = tmp_path / "scores" / "bicubic.json"
    result = run(
        "eval", "--sr", sr_dir, hr_dir, "--scale", 4, "--convention", "basicsr", "--out", out
    )
    assert result.exit_code == 0, result.output
    assert "chelsea" in result.output and "mean" in result.output
    data = json.loads(out.read_text())
    assert [image["name"] for image in data["images"]] == ["chelsea", "coffee"]
    for image in data["images"]:
        for key in ("psnr", "ssim", "lr_psnr"):
            assert image[key] == pytest.approx(expected[image["name"]][key], abs=1e-9)
    assert data["mean"]["psnr"] == pytest.approx(np.mean([e["psnr"] for e in expected.values()]))
    rows = list(csv.reader(out.with_suffix(".csv").open()))
    assert rows[0] == ["name", "psnr", "ssim", "lr_psnr"]
    assert [row[0] for row in rows[1:]] == ["chelsea", "coffee", "mean"]
    assert float(rows[3][1]) == pytest.approx(data["mean"]["psnr"])


def test_eval_sr_reports_missing_and_mismatched_files_by_name(folders, tmp_path):
    hr_dir, sr_dir, _ = folders
    partial = tmp_path / "partial"
    write_image(partial / "chelsea.png", np.zeros((64, 68, 3), np.uint8))
    missing = run("eval", "--sr", partial, hr_dir, "--scale", 4)
    assert (
        missing.exit_code == 1 and "coffee" in missing.output and "Traceback" not in missing.output
    )
    write_image(partial / "coffee.png", np.zeros((10, 10, 3), np.uint8))
    mismatched = run("eval", "--sr", partial, hr_dir, "--scale", 4)
    assert mismatched.exit_code == 1 and "coffee.png is 10x10" in mismatched.output


def test_eval_usage_errors(folders):
    hr_dir, sr_dir, _ = folders
    assert run("eval", "--sr", sr_dir, hr_dir).exit_code == 2
    assert run("eval", "--sr", sr_dir, hr_dir, "--scale", 4, "--nll").exit_code == 2


def test_identical_sr_scores_infinite_psnr_as_null(folders, tmp_path):
    hr_dir, _, _ = folders
    result = run(
        "eval",
        "--sr",
        hr_dir,
        hr_dir,
        "--scale",
        4,
        "--psnr",
        "--ssim",
        "--out",
        tmp_path / "s.json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["mean"]["psnr"] is None and data["mean"]["ssim"] == pytest.approx(1.0)


def test_eval_sr_lpips(folders, tmp_path):
    try:
        load_lpips()
    except LPIPSWeightsError as error:
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))
    hr_dir, sr_dir, _ = folders
    result = run(
        "eval", "--sr", sr_dir, hr_dir, "--scale", 4, "--lpips", "--out", tmp_path / "l.json"
    )
    assert result.exit_code == 0, result.output
    values = [image["lpips"] for image in json.loads((tmp_path / "l.json").read_text())["images"]]
    assert all(0.05 < value < 0.8 for value in values)


def test_eval_checkpoint_all_model_metrics(folders, checkpoint, tmp_path):
    hr_dir, _, _ = folders
    args = ["eval", checkpoint, hr_dir, "--psnr", "--ssim", "--lr-psnr", "--nll", "--samples", "2"]
    result = run(*args, "--temperature", "0.5", "--device", "cpu", "--out", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "m.json").read_text())
    assert set(data["mean"]) == {"psnr", "ssim", "lr_psnr", "nll_bpd"}
    assert all(math.isfinite(image["nll_bpd"]) for image in data["images"])
    assert data["settings"]["temperature"] == 0.5 and data["settings"]["samples"] == 2
    again = run(*args, "--temperature", "0.5", "--device", "cpu", "--out", tmp_path / "again.json")
    assert again.exit_code == 0
    assert json.loads((tmp_path / "again.json").read_text())["images"] == data["images"]


def test_eval_checkpoint_diversity(folders, checkpoint, tmp_path):
    try:
        load_lpips()
    except LPIPSWeightsError as error:
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))
    hr_dir, _, _ = folders
    args = [
        "eval",
        checkpoint,
        hr_dir,
        "--lpips",
        "--diversity",
        "--samples",
        "3",
        "--device",
        "cpu",
    ]
    result = run(*args, "--out", tmp_path / "d.json")
    assert result.exit_code == 0, result.output
    images = json.loads((tmp_path / "d.json").read_text())["images"]
    assert all(0 < image["diversity"] < 100 and 0 < image["lpips"] for image in images)
    zero = run(*args, "--temperature", "0", "--out", tmp_path / "z.json")
    assert zero.exit_code == 0, zero.output
    assert all(
        image["diversity"] == 0 for image in json.loads((tmp_path / "z.json").read_text())["images"]
    )


def test_eval_lpips_without_weights_names_the_file(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hr_dir, sr_dir, _ = folders
    result = run("eval", "--sr", sr_dir, hr_dir, "--scale", 4, "--lpips")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (
        str(tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILENAME)
        in result.output
    )
    assert "cinn-sr lpips-weights" in result.output and len(result.output.strip().splitlines()) == 1


def test_eval_sr_with_lr_dir(folders, tmp_path):
    hr_dir, sr_dir, expected = folders
    lr_dir = tmp_path / "lr"
    for name in expected:
        hr = read_image(hr_dir / f"{name}.png")
        write_image(
            lr_dir / f"{name}x4.png",
            imresize(hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4], 1 / 4),
        )
    result = run(
        "eval",
        "--sr",
        sr_dir,
        hr_dir,
        "--scale",
        4,
        "--lr-psnr",
        "--lr-dir",
        lr_dir,
        "--out",
        tmp_path / "r.json",
    )
    assert result.exit_code == 0, result.output
    images = json.loads((tmp_path / "r.json").read_text())["images"]
    assert [image["lr_psnr"] for image in images] == pytest.approx(
        [expected[i["name"]]["lr_psnr"] for i in images]
    )


def test_eval_bad_device_temperature_and_output_are_one_line_errors(folders, checkpoint, tmp_path):
    hr_dir, _, _ = folders
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = [
        (["--device", "nonsense"], 2, "nonsense"),
        (["--temperature", "nan", "--device", "cpu"], 2, "finite"),
        (["--psnr", "--device", "cpu", "--out", blocker / "scores.json"], 1, "scores.json"),
    ]
    for args, code, word in cases:
        result = run("eval", checkpoint, hr_dir, *args)
        assert result.exit_code == code, (args, result.output, result.exception)
        assert isinstance(result.exception, SystemExit), (args, result.exception)
        assert word in result.output.strip().splitlines()[-1]


def test_eval_out_csv_is_a_usage_error(folders, tmp_path):
    """--out FILE.csv would write the JSON there and then overwrite it with the CSV."""
    hr_dir, sr_dir, _ = folders
    result = run("eval", "--sr", sr_dir, hr_dir, "--scale", "4", "--out", tmp_path / "scores.csv")
    assert result.exit_code == 2 and "FILE.json" in result.output, result.output
    assert not (tmp_path / "scores.csv").exists()
