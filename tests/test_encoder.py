"""RRDBEncoder: the per-level conditions (SRFlow paper, section 3.3), parameter names and counts."""

import re

import pytest
import torch
import torch.nn.functional as F

from cinn_sr.encoder import RRDBEncoder
from cinn_sr.presets import PRESETS, preset


def _block_outputs(encoder, lr):
    """Outputs of every trunk block, recorded with forward hooks."""
    outputs = {}
    handles = [
        block.register_forward_hook(lambda m, i, o, idx=idx: outputs.__setitem__(idx, o))
        for idx, block in enumerate(encoder.RRDB_trunk)
    ]
    try:
        with torch.no_grad():
            conditions = encoder(lr)
    finally:
        for h in handles:
            h.remove()
    return conditions, outputs


@pytest.mark.parametrize(
    "name, skip", [("tiny-4x", "trunk"), ("tiny-8x", "trunk"), ("tiny-4x", "input")]
)
def test_conditions_are_base_features_plus_nearest_resized_stacked_blocks(name, skip):
    torch.manual_seed(0)
    config = preset(name, rrdb_skip=skip)
    encoder = RRDBEncoder(config).eval()
    lr = torch.rand(2, 3, 6, 10)
    conditions, blocks = _block_outputs(encoder, lr)
    nf = config.nf

    with torch.no_grad():
        fea = blocks[config.n_rrdb - 1]
        # SRFlow's RRDBNet skips from the last block output, ESRGAN's from conv_first's
        lr_feature = (fea if skip == "trunk" else encoder.conv_first(lr)) + encoder.trunk_conv(fea)
        ups, x = {}, lr_feature
        for i in range(1, config.n_up + 1):
            # the reference reads these after its in-place LeakyReLU
            nearest = x.repeat_interleave(2, 2).repeat_interleave(2, 3)
            x = F.leaky_relu(getattr(encoder, f"upconv{i}")(nearest), 0.2)
            ups[2**i] = x
        # a x0.5 bilinear resize (align_corners=False) is the mean of each 2x2 block
        ups[0.5] = F.avg_pool2d(lr_feature, 2)
        ups[1] = lr_feature
    stacked = [blocks[b] for b in config.stack_blocks]

    assert len(conditions) == config.L
    for cond, factor in zip(conditions, config.level_factors, strict=True):
        h, w = int(6 * factor), int(10 * factor)
        assert cond.shape == (2, config.cond_channels, h, w)
        torch.testing.assert_close(cond[:, :nf], ups[factor], rtol=1e-5, atol=1e-6)
        for j, block in enumerate(stacked):
            rows = (torch.arange(h) * 6 // h).tolist()
            cols = (torch.arange(w) * 10 // w).tolist()
            expected = block[:, :, rows][:, :, :, cols]
            torch.testing.assert_close(cond[:, nf * (j + 1): nf * (j + 2)], expected)


def test_flow_conditions_never_compute_the_esrgan_head():
    encoder = RRDBEncoder(PRESETS["tiny-4x"])
    calls = []
    for name in ("HRconv", "conv_last", "upconv2"):
        getattr(encoder, name).register_forward_hook(lambda m, i, o, n=name: calls.append(n))
    with torch.no_grad():
        encoder(torch.rand(1, 3, 8, 8))
        assert calls == []
        sr = encoder.sr(torch.rand(1, 3, 8, 8))
    assert sr.shape == (1, 3, 32, 32)
    assert calls == ["upconv2", "HRconv", "conv_last"]


@pytest.mark.parametrize("name", ["div2k-4x", "celeba-8x"])
def test_reference_parameter_names_and_counts(name):
    config = PRESETS[name]
    encoder = RRDBEncoder(config)
    keys = list(encoder.state_dict())
    rrdb = re.compile(r"RRDB_trunk\.(\d+)\.RDB[123]\.conv[1-5]\.(weight|bias)$")
    trunk_keys = [k for k in keys if rrdb.match(k)]
    assert len(trunk_keys) == config.n_rrdb * 3 * 5 * 2
    assert {int(rrdb.match(k).group(1)) for k in trunk_keys} == set(range(config.n_rrdb))
    head = sorted(k for k in keys if k not in trunk_keys)
    convs = ["conv_first", "trunk_conv", "HRconv", "conv_last"]
    convs += [f"upconv{i}" for i in range(1, config.n_up + 1)]
    assert head == sorted(f"{c}.{p}" for c in convs for p in ("weight", "bias"))
    n_params = sum(p.numel() for p in encoder.parameters())
    expected = {"div2k-4x": 16_697_987, "celeba-8x": 5_943_555}[name]
    assert n_params == expected  # the reference code (andreas128/SRFlow): 16.7 M and 5.9 M


def test_growth_and_width_come_from_the_config():
    config = preset("tiny-4x", nf=8, gc=4, n_rrdb=3, stack_blocks=(2,))
    encoder = RRDBEncoder(config)
    assert encoder.RRDB_trunk[0].RDB1.conv2.weight.shape == (4, 8 + 4, 3, 3)
    conditions = encoder(torch.rand(1, 3, 4, 4))
    assert [c.shape[1] for c in conditions] == [16, 16, 16]
