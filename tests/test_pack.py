"""pack_images and `cinn-sr pack` on the real scikit-image photos and on odd input files."""

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from datasets_helpers import make_odd_images

import cinn_sr.datasets.pack as pack_module
from cinn_sr.datasets import (
    PATCH_FILE_FORMAT,
    imresize,
    pack_images,
    sample_photo_paths,
    write_image,
)
from cli import main


@pytest.fixture(scope="module")
def photo_paths():
    return [path for _, path in sample_photo_paths()]


@pytest.fixture(scope="module")
def packed(tmp_path_factory, photo_paths):
    out = tmp_path_factory.mktemp("pack") / "photos.h5"
    summary = pack_images(photo_paths, out, scale=4, patch=160, per_image=3, progress=False)
    return out, summary


def test_random_pack_round_trip(packed, photo_paths):
    out, summary = packed
    assert summary.patches == 3 * len(photo_paths) == 27
    assert summary.images == len(photo_paths) and summary.skipped == []
    assert [p.name for p in out.parent.iterdir()] == ["photos.h5"]
    with h5py.File(out, "r") as handle:
        hr, lr = handle["hr"], handle["lr"]
        assert hr.shape == (27, 160, 160, 3) and lr.shape == (27, 40, 40, 3)
        assert hr.dtype == np.uint8 and lr.dtype == np.uint8
        assert hr.chunks == (1, 160, 160, 3) and lr.chunks == (1, 40, 40, 3)
        assert hr.compression == "gzip"
        attrs = dict(handle.attrs)
        assert attrs["format"] == PATCH_FILE_FORMAT and attrs["format_version"] == 1
        assert attrs["version"]
        assert (attrs["scale"], attrs["patch"], attrs["per_image"]) == (4, 160, 3)
        assert (attrs["degradation"], attrs["mode"]) == ("bicubic", "random")
        assert list(attrs["sources"]) == [p.name for p in photo_paths]
        hr_all, lr_all = hr[:], lr[:]
        np.testing.assert_array_equal(handle["source_index"][:], np.repeat(np.arange(9), 3))
    np.testing.assert_array_equal(lr_all, imresize(hr_all, 1 / 4))
    assert "packed 27 patches" in summary.line()


def test_random_crops_follow_the_seed(tmp_path, photo_paths):
    first = pack_images(
        photo_paths[:2], tmp_path / "a.h5", patch=64, per_image=4, seed=0, progress=False
    )
    again = pack_images(
        photo_paths[:2], tmp_path / "b.h5", patch=64, per_image=4, seed=0, progress=False
    )
    other = pack_images(
        photo_paths[:2], tmp_path / "c.h5", patch=64, per_image=4, seed=1, progress=False
    )
    with h5py.File(first.out) as a, h5py.File(again.out) as b, h5py.File(other.out) as c:
        np.testing.assert_array_equal(a["hr"][:], b["hr"][:])
        assert not np.array_equal(a["hr"][:], c["hr"][:])


def test_grid_pack_takes_every_position(tmp_path, photo_paths):
    from cinn_sr.datasets import read_image

    images = [read_image(p) for p in photo_paths[:3]]
    summary = pack_images(
        photo_paths[:3], tmp_path / "grid.h5", scale=2, patch=96, stride=150, progress=False
    )
    expected = sum(
        ((h - 96) // 150 + 1) * ((w - 96) // 150 + 1) for h, w, _ in (i.shape for i in images)
    )
    assert summary.patches == expected
    with h5py.File(summary.out) as handle:
        assert handle.attrs["mode"] == "grid" and handle.attrs["stride"] == 150
        np.testing.assert_array_equal(handle["hr"][0], images[0][:96, :96])
        np.testing.assert_array_equal(handle["hr"][1], images[0][:96, 150:246])
        assert handle["lr"].shape[1:] == (48, 48, 3)


def test_max_side_downscales_large_images_first(tmp_path, photo_paths):
    from cinn_sr.datasets import read_image

    large, small = read_image(photo_paths[0]), read_image(photo_paths[1])  # 512 and 451 wide
    assert max(large.shape[:2]) > 480 >= max(small.shape[:2])
    summary = pack_images(
        photo_paths[:2], tmp_path / "g.h5", patch=64, stride=100, max_side=480, progress=False
    )
    factor = 480 / max(large.shape[:2])
    shrunk = imresize(large, size=(round(large.shape[0] * factor), round(large.shape[1] * factor)))
    assert max(shrunk.shape[:2]) == 480
    with h5py.File(summary.out) as handle:
        assert handle.attrs["max_side"] == 480
        first = handle["source_index"][:] == 0
        n_large = ((shrunk.shape[0] - 64) // 100 + 1) * ((shrunk.shape[1] - 64) // 100 + 1)
        assert first.sum() == n_large
        np.testing.assert_array_equal(handle["hr"][1], shrunk[:64, 100:164])
        second = np.flatnonzero(~first)[0]
        np.testing.assert_array_equal(handle["hr"][second], small[:64, :64])  # already small
    for options in ({"max_side": 32}, {"max_side": 480, "lr_dir": tmp_path}):
        with pytest.raises(ValueError, match="max_side"):
            pack_images(photo_paths[:1], tmp_path / "x.h5", patch=64, progress=False, **options)
    result = CliRunner().invoke(
        main, ["pack", str(photo_paths[0]), "--out", str(tmp_path / "c.h5"), "--patch", "64",
               "--per-image", "2", "--max-side", "300"],
    )
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "c.h5") as handle:
        assert handle.attrs["max_side"] == 300 and handle["hr"].shape[0] == 2


def coordinate_image(height: int, width: int) -> np.ndarray:
    """Each pixel spells its own position: R = y mod 256, G = x mod 256,
    B = 16 (y // 256) + x // 256."""
    y, x = np.mgrid[:height, :width]
    return np.stack([y % 256, x % 256, 16 * (y // 256) + x // 256], axis=2).astype(np.uint8)


def test_paired_pack_crops_the_matching_lr(tmp_path):
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    rng = np.random.default_rng(0)
    lr_images = {}
    for stem, (h, w) in {"0801": (322, 410), "0802": (300, 283)}.items():
        write_image(hr_dir / f"{stem}.png", coordinate_image(h, w))
        lr_images[stem] = rng.integers(0, 256, size=(h // 4, w // 4, 3), dtype=np.uint8)
        write_image(lr_dir / f"{stem}x4.png", lr_images[stem])
    write_image(hr_dir / "0803.png", coordinate_image(200, 200))
    summary = pack_images(
        hr_dir, tmp_path / "paired.h5", patch=64, per_image=5, lr_dir=lr_dir, progress=False
    )
    assert summary.patches == 10 and summary.degradation == "paired"
    assert summary.skipped == [("0803.png", "no LR image with a matching name")]
    with h5py.File(summary.out) as handle:
        assert handle.attrs["degradation"] == "paired"
        sources = list(handle.attrs["sources"])
        for hr, lr, source in zip(
            handle["hr"][:], handle["lr"][:], handle["source_index"][:], strict=True
        ):
            y = int(hr[0, 0, 0]) + 256 * (int(hr[0, 0, 2]) // 16)
            x = int(hr[0, 0, 1]) + 256 * (int(hr[0, 0, 2]) % 16)
            assert y % 4 == 0 and x % 4 == 0
            lr_image = lr_images[sources[source].removesuffix(".png")]
            np.testing.assert_array_equal(lr, lr_image[y // 4 : y // 4 + 16, x // 4 : x // 4 + 16])


def test_faces_mode_resizes_the_centre_square(tmp_path, photo_paths):
    from cinn_sr.datasets import read_image

    summary = pack_images(
        photo_paths[1:2], tmp_path / "faces.h5", scale=8, faces=True, progress=False
    )
    image = read_image(photo_paths[1])  # chelsea, 300 x 451
    square = image[:, 75:375]
    with h5py.File(summary.out) as handle:
        assert handle["hr"].shape == (1, 160, 160, 3) and handle.attrs["mode"] == "faces"
        np.testing.assert_array_equal(handle["hr"][0], imresize(square, size=(160, 160)))
        np.testing.assert_array_equal(handle["lr"][0], imresize(handle["hr"][0], 1 / 8))


def test_bad_inputs_are_converted_or_skipped(tmp_path, photo_paths):
    odd = tmp_path / "odd"
    make_odd_images(odd)
    summary = pack_images([odd, photo_paths[0]], tmp_path / "odd.h5", per_image=2, progress=False)
    assert summary.images == 6 and summary.patches == 12
    skipped = dict(summary.skipped)
    assert set(skipped) == {"bomb.png", "notes.png", "tiny.png", "truncated.jpg"}
    assert "decompression-bomb limit" in skipped["bomb.png"]
    assert skipped["truncated.jpg"] == "truncated file"
    assert "smaller than the 160x160 patch" in skipped["tiny.png"]
    assert summary.warnings == ["rgba.png: alpha channel dropped"]
    assert "skipped 4: bomb.png" in summary.line()
    with h5py.File(summary.out) as handle:
        assert set(handle.attrs["sources"]) == {
            "gray.png",
            "gray16.png",
            "rgb16.png",
            "rgb16.tif",
            "rgba.png",
            photo_paths[0].name,
        }
        hr = handle["hr"][:]
        gray = hr[np.asarray(handle["source_index"][:]) == 0]
        assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_no_readable_image_is_an_error_and_leaves_no_file(tmp_path):
    odd = tmp_path / "odd"
    make_odd_images(odd)
    out_dir = tmp_path / "out"
    unreadable = [odd / "notes.png", odd / "truncated.jpg", odd / "tiny.png"]
    with pytest.raises(ValueError, match="no image could be packed") as error:
        pack_images(unreadable, out_dir / "none.h5", progress=False)
    assert "\n" not in str(error.value)
    assert list(out_dir.iterdir()) == []
    for i in range(12):
        (odd / f"junk{i:02d}.png").write_bytes(b"junk")
    with pytest.raises(
        ValueError, match=r"junk09.png \(not a recognised image file\); and 2 more$"
    ):
        pack_images(sorted(odd.glob("junk*.png")), out_dir / "none.h5", progress=False)


def test_interrupted_pack_leaves_no_file(tmp_path, photo_paths, monkeypatch):
    calls = []

    def interrupted_resize(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return imresize(*args, **kwargs)

    monkeypatch.setattr(pack_module, "imresize", interrupted_resize)
    out = tmp_path / "out" / "photos.h5"
    with pytest.raises(KeyboardInterrupt):
        pack_images(photo_paths[:3], out, per_image=2, progress=False)
    assert list(out.parent.iterdir()) == []


def test_cli_pack(tmp_path, photo_paths):
    runner = CliRunner()
    out = tmp_path / "cli.h5"
    args = ["pack", str(photo_paths[0]), str(photo_paths[2]), "--out", str(out), "--per-image", "2"]
    result = runner.invoke(main, [*args, "--scale", "8", "--patch", "128"])
    assert result.exit_code == 0, result.output
    assert "packed 4 patches (128x128 HR, 16x16 LR, x8 bicubic) from 2 images" in result.output
    with h5py.File(out) as handle:
        assert handle["lr"].shape == (4, 16, 16, 3) and handle.attrs["scale"] == 8

    odd = tmp_path / "odd"
    make_odd_images(odd)
    result = runner.invoke(main, ["pack", str(odd / "notes.png"), "--out", str(tmp_path / "x.h5")])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].startswith("Error: no image could be packed")
    assert not (tmp_path / "x.h5").exists()

    result = runner.invoke(main, [*args, "--stride", "64"])
    assert result.exit_code == 2 and "exclude each other" in result.output
    result = runner.invoke(main, [*args, "--patch", "98"])
    assert result.exit_code == 2 and "not a multiple of scale 4" in result.output
    result = runner.invoke(main, [*args, "--faces", "--lr-dir", str(odd)])
    assert result.exit_code == 2 and "faces packs one patch" in result.output
