"""A NaN or inf pixel is never written or scored silently: sample, eval and edit name the
image and the fraction, suggest the remedy and exit non-zero."""

import pytest
import torch
from click.testing import CliRunner

import cinn_sr
from cinn_sr.datasets import imresize, sample_photos, write_image
from cinn_sr.sampling import describe_nonfinite, nonfinite_fraction
from cli import main


def test_nonfinite_fraction_counts_pixels_with_any_bad_channel():
    images = torch.zeros(3, 3, 4, 5)
    images[0, 1, 0, :2] = float("nan")  # 2 of 20 pixels
    images[1, :, 1:3, :] = float("inf")  # 10 of 20, all channels
    fractions = nonfinite_fraction(images)
    assert fractions.tolist() == [0.1, 0.5, 0.0]
    names = [(f"x{i}.png", 0.25) for i in range(7)]
    assert describe_nonfinite(names[:1]) == "x0.png (25.0 %)"
    assert describe_nonfinite(names).endswith("x4.png (25.0 %) and 2 more")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny-4x checkpoint, the same with one NaN bias in the flow, an LR and an HR photo."""
    root = tmp_path_factory.mktemp("nonfinite")
    torch.manual_seed(0)
    photo = dict(sample_photos())["chelsea"][40:104, 100:164]
    hr = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255
    model = cinn_sr.SRFlow.from_preset("tiny-4x")
    model.initialize(imresize(hr, 1 / 4), hr)
    good = cinn_sr.save_checkpoint(root / "good.pt", model)
    with torch.no_grad():
        next(p for n, p in model.flow.named_parameters() if n.endswith("bias")).fill_(float("nan"))
    bad = cinn_sr.save_checkpoint(root / "nan.pt", model)
    write_image(root / "hr" / "chelsea.png", photo)
    write_image(root / "lr.png", imresize(photo, 1 / 4))
    return root, good, bad


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def lines_of(result) -> list[str]:
    """The printed lines without the progress bars (the text after each line's last \\r)."""
    lines = (line.rsplit("\r", 1)[-1] for line in result.output.splitlines())
    return [line for line in lines if line.strip()]


def test_sample_writes_no_nonfinite_image_and_fails(files):
    root, good, bad = files
    result = run("sample", bad, root / "lr.png", "--out", root / "sr", "--samples", "2")
    assert result.exit_code == 1, result.output
    lines = lines_of(result)
    assert "wrote 0 images" in lines[-2] and "lr_t0.7_s0.png (100.0 %)" in lines[-2]
    assert lines[-1].startswith("Error: 2 of 2 samples had NaN/inf pixels")
    assert "softclamp" in lines[-1]
    assert "Traceback" not in result.output
    assert not (root / "sr").exists() or not list((root / "sr").iterdir())
    result = run("sample", good, root / "lr.png", "--out", root / "sr")
    assert result.exit_code == 0 and (root / "sr" / "lr_t0.7_s0.png").is_file()


def test_eval_does_not_score_nonfinite_samples(files):
    root, good, bad = files
    result = run("eval", bad, root / "hr", "--psnr", "--out", root / "scores.json")
    assert result.exit_code == 1, result.output
    line = lines_of(result)[-1]
    assert result.output.count("Error") == 1
    assert line.startswith("Error: every image has samples with NaN/inf pixels (chelsea (100.0 %))")
    assert not (root / "scores.json").exists()
    assert run("eval", good, root / "hr", "--psnr").exit_code == 0


def test_edit_writes_no_nonfinite_result(files):
    root, _, bad = files
    out = root / "restored.png"
    result = run("edit", "restore", bad, root / "hr" / "chelsea.png", "--out", out)
    assert result.exit_code == 1, result.output
    line = lines_of(result)[-1]
    assert result.output.count("Error") == 1
    assert line.startswith("Error: the result has NaN/inf in 100.0 % of its pixels")
    assert "softclamp" in line
    assert not out.exists()


def test_recover_redraws_only_the_exploded_region_at_a_lower_temperature(tmp_path):
    from cinn_sr.latent import recover_nonfinite

    model = cinn_sr.load("small-4x")
    hr = torch.from_numpy(dict(sample_photos())["astronaut"][0:128, 100:228].copy())
    lr = imresize(hr.permute(2, 0, 1)[None].float() / 255, 1 / 4).clamp(0, 1)
    generator = torch.Generator().manual_seed(0)
    eps = [torch.randn(1, *shape, generator=generator) for shape in model.latent_shapes(128, 128)]
    exploded = model.decode(lr, [1.5 * e for e in eps])
    assert 0 < float(nonfinite_fraction(exploded)) < 0.9  # this sample explodes in part
    image, redrawn, last = recover_nonfinite(model, lr, [1.5 * e for e in eps], 1.5,
                                             torch.Generator().manual_seed(1))
    assert torch.isfinite(image).all() and last == 0.75
    assert 0 < float(redrawn.float().mean()) < 1  # only part of the latents re-drawn
    assert not redrawn[torch.isfinite(exploded).all(1)[0]].all()

    write_image(tmp_path / "lr.png", lr)
    args = ["sample", "small-4x", str(tmp_path / "lr.png"), "--out", str(tmp_path / "sr"),
            "--temperature", "1.5", "--device", "cpu"]
    failed = CliRunner().invoke(main, args)
    assert failed.exit_code == 1 and "NaN/inf" in failed.output
    result = CliRunner().invoke(main, [*args, "--recover"])
    assert result.exit_code == 0, result.output
    assert "wrote 1 image" in result.output and "recovered 1 sample (lr_t1.5_s0.png:" in (
        result.output
    ) and "down to t 0.75" in result.output
    assert (tmp_path / "sr" / "lr_t1.5_s0.png").is_file()
    tiled = CliRunner().invoke(main, [*args, "--recover", "--tile", "16"])
    assert tiled.exit_code == 2 and "drop tile" in tiled.output
