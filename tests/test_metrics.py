"""PSNR / SSIM under both conventions against reference figures, LR-PSNR, and the NTIRE 2021
(Learning the SR Space) diversity score."""

import math

import numpy as np
import pytest
import skimage.data
import torch

from cinn_sr.datasets import imresize
from cinn_sr.metrics import diversity, lr_psnr, psnr, rgb_to_y, ssim, to_uint8


@pytest.fixture(scope="module")
def astronaut():
    """HR astronaut, its MATLAB-bicubic 1/4 LR and the bicubic 4x SR of that LR (uint8)."""
    hr = skimage.data.astronaut()
    lr = imresize(hr, 1 / 4)
    return hr, lr, imresize(lr, 4)


@pytest.mark.parametrize(
    ("convention", "expected_psnr", "expected_ssim"),
    [("srflow", 25.390, 0.8314), ("basicsr", 26.844, 0.8429)],
)
def test_bicubic_astronaut_matches_reference(astronaut, convention, expected_psnr, expected_ssim):
    hr, _, sr = astronaut
    assert psnr(sr, hr, convention, scale=4) == pytest.approx(expected_psnr, abs=0.01)
    assert ssim(sr, hr, convention, scale=4) == pytest.approx(expected_ssim, abs=0.001)


@pytest.mark.parametrize("convention", ["srflow", "basicsr"])
def test_identical_images_give_infinite_psnr_and_unit_ssim(astronaut, convention):
    hr = astronaut[0]
    assert math.isinf(psnr(hr, hr.copy(), convention))
    assert ssim(hr, hr.copy(), convention) == pytest.approx(1.0)


def test_float_tensors_are_rounded_like_saved_images(astronaut):
    hr, _, sr = astronaut
    sr_tensor = torch.from_numpy(sr).permute(2, 0, 1).double() / 255 + 0.4 / 255
    assert np.array_equal(to_uint8(sr_tensor), sr)
    assert psnr(sr_tensor, hr) == psnr(sr, hr)


def test_luma_is_matlab_rgb2ycbcr():
    image = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0]]], dtype=np.uint8)
    assert rgb_to_y(image)[0].tolist() == pytest.approx([16.0, 235.0, 16.0 + 65.481])


def test_border_crop_ignores_border_errors(astronaut):
    hr = astronaut[0]
    damaged = hr.copy()
    damaged[:4] = 0
    assert math.isinf(psnr(damaged, hr, "basicsr", scale=4))
    assert psnr(damaged, hr, "basicsr", scale=2) < 30


def test_size_mismatch_and_unknown_convention_are_errors(astronaut):
    hr, lr, _ = astronaut
    with pytest.raises(ValueError, match="sizes differ"):
        psnr(lr, hr)
    with pytest.raises(ValueError, match="convention"):
        ssim(hr, hr, "matlab")


def test_lr_psnr(astronaut):
    hr, lr, sr = astronaut
    assert lr_psnr(hr, lr, scale=4) > 60
    bicubic = lr_psnr(sr, lr, scale=4)
    assert 30 < bicubic < 60


def test_diversity_of_maps():
    maps = torch.rand(1, 8, 8).repeat(10, 1, 1)
    assert diversity(maps) == 0
    complementary = torch.stack([torch.eye(8), 1 - torch.eye(8)])
    assert diversity(complementary) == pytest.approx(100.0)
    assert 0 < diversity(torch.rand(10, 8, 8)) < 100


def test_to_uint8_reads_every_3d_tensor_as_chw():
    """Tiny images whose width is 1 or 3 (a 4x4 HR patch has a 1x1 LR) stay C x H x W."""
    for shape in [(3, 1, 1), (3, 1, 3), (1, 3, 3), (3, 2, 3)]:
        tensor = torch.rand(shape)
        assert to_uint8(tensor).shape == (shape[1], shape[2], shape[0])
    assert lr_psnr(torch.full((3, 4, 4), 0.5), torch.full((3, 1, 1), 0.5), 4) > 60
