"""The README's examples: the conditional Glow (colourisation, outside SR) trains and samples;
the custom flow step ("Build your own flow") inverts, reads both conditions and trains."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str = "conditional_glow"):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
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


def test_the_custom_flow_inverts_reads_both_conditions_and_trains_every_parameter():
    example = load_example("custom_flow_step")
    torch.manual_seed(0)
    flow = example.build_flow(steps=2)
    data = torch.randn(4, 12, 16, 16)
    c = [torch.randn(2, 64, 16, 16), torch.randn(2, 1, 16, 16)]
    flow(data, c=c)  # initialises the ActNorms
    with torch.no_grad():  # let the zero-initialised output layers act
        for module in flow.modules():
            if isinstance(module, torch.nn.Sequential):
                module[2].weight.normal_(0, 0.01)
    z, logdet = flow(data, c=c)
    back, _ = flow(z, c=c, rev=True)
    assert (back - data).abs().max() < 1e-4
    other_edges, _ = flow(data, c=[c[0], torch.randn(2, 1, 16, 16)])
    assert (other_edges - z).abs().max() > 1e-3
    (0.5 * (z ** 2).sum() - logdet.sum()).backward()
    for name, parameter in flow.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
