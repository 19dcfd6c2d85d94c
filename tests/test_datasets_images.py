"""read_image / write_image on real odd files, and the bundled sample photos."""

import warnings

import numpy as np
import pytest
import torch
from datasets_helpers import make_odd_images

from cinn_sr.datasets import (
    SAMPLE_PHOTO_FILES,
    ImageReadError,
    list_images,
    read_image,
    sample_photos,
    write_image,
)


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    return folder, make_odd_images(folder)


@pytest.mark.parametrize("name", ["gray.png", "gray16.png", "rgb16.tif", "rgb16.png"])
def test_readable_odd_images_become_8bit_rgb(odd_folder, name):
    folder, expected = odd_folder
    image = read_image(folder / name)
    assert image.dtype == np.uint8 and image.shape == (200, 240, 3)
    np.testing.assert_array_equal(image, expected[name])


def test_alpha_is_dropped_with_a_warning(odd_folder):
    folder, expected = odd_folder
    with pytest.warns(UserWarning, match="rgba.png: alpha channel dropped"):
        image = read_image(folder / "rgba.png")
    np.testing.assert_array_equal(image, expected["rgba.png"])


@pytest.mark.parametrize(
    "name, reason",
    [
        ("truncated.jpg", "truncated file"),
        ("notes.png", "not a recognised image"),
        ("bomb.png", "too large to read safely"),
        ("gone.png", "no such file"),
    ],
)
def test_unreadable_files_raise_one_line(odd_folder, name, reason):
    folder, _ = odd_folder
    with pytest.raises(ImageReadError, match=reason) as error:
        read_image(folder / name)
    assert "\n" not in str(error.value)


def test_write_image_round_trip_is_atomic(tmp_path):
    tensor = torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(0))
    path = write_image(tmp_path / "sub" / "out.png", tensor[None])
    assert [p.name for p in path.parent.iterdir()] == ["out.png"]
    expected = torch.floor(tensor * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(read_image(path), expected)
    write_image(path, expected[:5])
    assert read_image(path).shape == (5, 23, 3)
    assert list_images(path.parent) == [path]


def test_sample_photos_are_real_rgb_photos():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        photos = sample_photos()
    assert [name for name, _ in photos] == list(SAMPLE_PHOTO_FILES)
    for _, image in photos:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert min(image.shape[:2]) >= 300
        assert image.std() > 10
