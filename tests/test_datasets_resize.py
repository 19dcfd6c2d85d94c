"""MATLAB-style bicubic imresize: hand-computed weights, reference figures, dtypes, devices."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cinn_sr.datasets import imresize, resize_weights
from cinn_sr.datasets.resize import cubic

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def astronaut_float(astronaut) -> torch.Tensor:
    return torch.from_numpy(astronaut).permute(2, 0, 1)[None].double() / 255


def test_cubic_kernel_values():
    x = np.array([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5])
    expected = [1.0, 0.8671875, 0.2265625, 0.0, -0.0703125, -0.0234375, 0.0, 0.0]
    np.testing.assert_allclose(cubic(x), expected, atol=1e-15)
    np.testing.assert_allclose(cubic(-x), expected, atol=1e-15)


def test_downscale_weights_by_hand():
    # 4 -> 2 pixels (scale 1/2): output 1 sits at u = 1/0.5 + 0.5 (1 - 2) = 1.5; the kernel is
    # widened to 8 taps, w(i) = 0.5 k(0.5 (1.5 - i)) for i = -2..5, and the taps outside
    # 1..4 mirror back (index -2 -> 3, -1 -> 2, 0 -> 1, 5 -> 4).
    k = {0.25: 0.8671875, 0.75: 0.2265625, 1.25: -0.0703125, 1.75: -0.0234375}
    taps = {-2: k[1.75], -1: k[1.25], 0: k[0.75], 1: k[0.25], 2: k[0.25], 3: k[0.75]}
    taps.update({4: k[1.25], 5: k[1.75]})
    mirror = {-2: 3, -1: 2, 0: 1, 5: 4}
    row = np.zeros(4)
    for index, weight in taps.items():
        row[mirror.get(index, index) - 1] += 0.5 * weight
    np.testing.assert_allclose(row, [0.546875, 0.3984375, 0.1015625, -0.046875], atol=1e-15)
    matrix = resize_weights(4, 2, 0.5)
    np.testing.assert_allclose(matrix[0], row, atol=1e-15)
    np.testing.assert_allclose(matrix[1], row[::-1], atol=1e-15)


def test_upscale_weights_by_hand():
    # 3 -> 6 pixels (scale 2): output 1 at u = 0.5 + 0.25 = 0.75, taps i = -1..2 with
    # distances 1.75, 0.75, -0.25, -1.25; index -1 mirrors to 2 and 0 to 1.
    matrix = resize_weights(3, 6, 2.0)
    np.testing.assert_allclose(matrix[0], [0.2265625 + 0.8671875, -0.0234375 - 0.0703125, 0.0])
    np.testing.assert_allclose(matrix.sum(axis=1), np.ones(6), atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 4])
def test_constant_image_stays_constant(device, scale):
    image = torch.full((2, 3, 24, 36), 0.3, dtype=torch.float64, device=device)
    resized = imresize(image, scale)
    assert resized.shape == (2, 3, round(24 * scale), round(36 * scale))
    torch.testing.assert_close(resized, torch.full_like(resized, 0.3), rtol=0, atol=1e-12)
    constant_uint8 = np.full((24, 36, 3), 77, dtype=np.uint8)
    assert (imresize(constant_uint8, scale) == 77).all()


def test_astronaut_reference_figures(astronaut):
    # The reference check: LR = round(imresize(HR, 1/4)), SR = round(imresize(LR, 4)).
    lr = imresize(astronaut, 1 / 4)
    sr = imresize(lr, 4)
    assert lr.shape == (128, 128, 3) and lr.dtype == np.uint8
    assert sr.shape == astronaut.shape and sr.dtype == np.uint8
    assert peak_signal_noise_ratio(astronaut, sr) == pytest.approx(25.390, abs=5e-4)
    assert structural_similarity(astronaut, sr, channel_axis=2) == pytest.approx(0.8314, abs=5e-5)


@pytest.mark.parametrize("scale", [2, 4])
def test_downscale_close_to_torch_antialias_far_from_plain_bicubic(astronaut_float, scale):
    ours = imresize(astronaut_float, 1 / scale)
    antialias = F.interpolate(
        astronaut_float, scale_factor=1 / scale, mode="bicubic", antialias=True
    )
    plain = F.interpolate(astronaut_float, scale_factor=1 / scale, mode="bicubic")
    assert psnr(ours, antialias) >= 55
    assert psnr(ours, plain) < 40


def test_up_then_down_returns_close_to_input(astronaut_float):
    crop = astronaut_float[..., 128:320, 160:352]
    back = imresize(imresize(crop, 4), 1 / 4)
    assert back.shape == crop.shape
    assert psnr(back, crop) > 38


def test_uint8_and_float_paths_agree(astronaut):
    crop = astronaut[:131, :203]
    as_float = torch.from_numpy(crop).permute(2, 0, 1).double()
    for scale in (1 / 4, 3):
        from_uint8 = imresize(crop, scale)
        from_float = imresize(as_float, scale).clamp(0, 255)
        expected = torch.floor(from_float + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(from_uint8, expected)
        tensor_uint8 = imresize(torch.from_numpy(crop).permute(2, 0, 1), scale)
        np.testing.assert_array_equal(tensor_uint8.permute(1, 2, 0).numpy(), from_uint8)


def test_float_output_is_not_clamped():
    edge = torch.zeros(1, 1, 16, 16)
    edge[..., 8:] = 1.0
    up = imresize(edge, 4)
    assert up.dtype == torch.float32
    assert up.min() < 0 and up.max() > 1  # cubic overshoot survives


@pytest.mark.parametrize("device", DEVICES)
def test_batched_equals_one_by_one_and_sizes(astronaut_float, device):
    batch = (
        torch.cat([astronaut_float, astronaut_float.flip(-1)])[..., :101, :77].float().to(device)
    )
    resized = imresize(batch, 1 / 4)
    assert resized.shape == (2, 3, 26, 20) and resized.device.type == device
    for i in range(2):
        torch.testing.assert_close(imresize(batch[i], 1 / 4), resized[i])
    assert imresize(batch, size=(50, 60)).shape == (2, 3, 50, 60)


def test_numpy_layouts(astronaut):
    gray = astronaut[:64, :48, 0]
    assert imresize(gray, 1 / 2).shape == (32, 24)
    np.testing.assert_array_equal(
        imresize(gray, 1 / 2), imresize(astronaut[:64, :48], 1 / 2)[..., 0]
    )
    stacked = np.stack([astronaut[:64, :48], astronaut[64:128, :48]])
    assert imresize(stacked, 2).shape == (2, 128, 96, 3)


def test_bad_arguments():
    image = torch.zeros(3, 8, 8)
    with pytest.raises(ValueError):
        imresize(image)
    with pytest.raises(ValueError):
        imresize(image, 0)
    with pytest.raises(TypeError):
        imresize(image.long(), 2)
