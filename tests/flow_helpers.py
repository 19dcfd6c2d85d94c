"""A tiny SRFlow whose every block acts, photo crops, and the decoder's reach, for the tests
of latent edits and temperature maps."""

import torch

from cinn_sr import SRFlow
from cinn_sr.blocks.subnet import ZeroConv2d
from cinn_sr.datasets import imresize, sample_photos


def photo_crop(name: str, top: int, left: int, size: int) -> torch.Tensor:
    """A size x size crop of one of the scikit-image photos as [1, 3, H, W] floats in [0, 1]."""
    photo = dict(sample_photos())[name][top : top + size, left : left + size]
    return torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255


def random_tiny_model() -> SRFlow:
    """tiny-4x, ActNorms initialised on a photo, and the zero-initialised output convolutions
    of every coupling, injector and split set to random values, so that all of them act."""
    torch.manual_seed(0)
    model = SRFlow.from_preset("tiny-4x")
    hr = photo_crop("chelsea", 40, 100, 64)
    model.initialize(imresize(hr, 1 / 4), hr)
    randomise_output_layers(model)
    return model.eval()


def randomise_output_layers(model: SRFlow) -> None:
    """Set the zero-initialised output convolutions (couplings, injectors, splits) to small
    random values (from torch's global RNG), so that every block acts."""
    with torch.no_grad():
        for module in model.flow.modules():
            if isinstance(module, ZeroConv2d):
                module.weight.normal_(0, 0.02)
                module.bias.normal_(0, 0.02)


def receptive_radius(config) -> int:
    """HR pixels beyond the changed latents' footprint that decoding can reach.

    A latent entry at level l covers a 2^l x 2^l HR block (squeezes keep each block's values
    together). Going latent -> HR, the only spatial mixing is each flow step's coupling
    subnet (3x3, 1x1, 3x3 convolutions: 2 positions) and each prior split's 3x3 convolution
    (1 position); ActNorms, 1x1 invertible convs and the injectors (they see only the
    condition, which does not change) act per position. One position at level l is 2^l HR
    pixels, so the reach is sum_l 2^l (2 K + [l is a split level]).
    """
    return sum(
        2**level * (2 * config.K + (level in config.split_levels))
        for level in range(1, config.L + 1)
    )


def chebyshev_distance_to_box(size: int, rows: slice, cols: slice) -> torch.Tensor:
    """For every pixel of a size x size image, the max-norm distance to a rectangle."""
    index = torch.arange(size)

    def gap(box: slice) -> torch.Tensor:
        return (box.start - index).clamp_min(0) + (index - (box.stop - 1)).clamp_min(0)

    return torch.maximum(gap(rows)[:, None], gap(cols)[None, :])
