"""The README's conditional Glow example (colourisation, outside SR) trains and samples."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "conditional_glow.py"


def load_example():
    spec = importlib.util.spec_from_file_location("conditional_glow", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_brief_training_lowers_the_held_out_nll():
    example = load_example()
    torch.manual_seed(0)
    model = example.ConditionalGlow(size=8, steps_per_level=1, hidden=16)
    example.initialise_actnorms(model, n=64)
    before = example.held_out_nll(model, n=64)
    losses = example.train(model, steps=15, batch_size=16, seed=0)
    after = example.held_out_nll(model, n=64)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert after < before - 0.3, (before, after)

    grey = example.to_grey(example.synthetic_images(3, 8, torch.Generator().manual_seed(5)))
    samples = model.sample(grey, n=4, temperature=0.8, generator=torch.Generator().manual_seed(6))
    assert samples.shape == (12, 3, 8, 8) and torch.isfinite(samples).all()
    latents, _ = model.flow(samples, c=model.conditions(grey.repeat_interleave(4, dim=0)))
    redone = model.flow(latents, c=model.conditions(grey), rev=True)[0]
    torch.testing.assert_close(redone, samples, atol=1e-4, rtol=1e-4)
