"""Memory-saving backprop (`cinn_sr.blocks.memory_saving`, `cinn_sr.memory`): the gradients
of standard backprop, for SRFlow presets, generic FrEIA graphs, DDP and the training loop;
the drift guard."""

import os
import socket
import warnings
from unittest import mock

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from click.testing import CliRunner
from flow_helpers import randomise_output_layers
from torch import nn

from cinn_sr.blocks import ConditionalAffineCoupling, DriftWarning, MemorySavingFlow, upsampled
from cinn_sr.config import ConfigError, TrainConfig, read_toml, resolve, write_toml
from cinn_sr.driver import train
from cinn_sr.memory import set_memory_saving
from cinn_sr.model import SRFlow
from cinn_sr.runs import read_metrics
from cli import main

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}


def pair(config, lr_size: int, batch: int = 2, dtype=torch.float32, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    s = config.scale
    hr = torch.rand(batch, 3, lr_size * s, lr_size * s, generator=generator, dtype=dtype)
    return F.avg_pool2d(hr, s), hr


def random_model(name: str, lr_size: int, dtype, **overrides):
    """An initialised model of the preset whose zero-initialised layers are random."""
    torch.manual_seed(0)
    model = SRFlow.from_preset(name, **overrides).to(dtype)
    model.initialize(*pair(model.config, lr_size, dtype=dtype, seed=0))
    randomise_output_layers(model)
    return model


def gradients(model, lr, hr, memory_saving: bool) -> tuple[float, dict]:
    """The NLL and the gradients of every parameter and condition input."""
    set_memory_saving(model, memory_saving)
    model.zero_grad(set_to_none=True)
    cond = model.condition(lr)  # an NCSR model's zero noise maps need no gradient
    for c in cond:
        if c.requires_grad:
            c.retain_grad()
    loss = model.nll(lr, hr, cond=cond).sum()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    grads.update({f"condition {i}": c.grad for i, c in enumerate(cond) if c.requires_grad})
    set_memory_saving(model, False)
    return float(loss.detach()), grads


def assert_same_gradients(expected: dict, actual: dict, tolerance: float) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        error = (actual[name] - value).abs().max() / value.abs().max().clamp_min(1e-30)
        assert error <= tolerance, (name, float(error))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name, overrides", [
    ("tiny-4x", {}), ("tiny-8x", {}), ("tiny-4x", {"split_every_level": True}),
    ("tiny-4x", {"noise_steps": (0, 1, 2)}),
], ids=["tiny-4x", "tiny-8x", "split-every-level", "tiny-ncsr"])
def test_gradients_equal_standard_backprop(name, overrides, dtype):
    model = random_model(name, 8, dtype, **overrides)
    lr, hr = pair(model.config, 8, dtype=dtype)
    loss, expected = gradients(model, lr, hr, memory_saving=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DriftWarning)
        again, actual = gradients(model, lr, hr, memory_saving=True)
    assert again == pytest.approx(loss, rel=1e-6)
    flow_params = {n for n, p in model.named_parameters() if n.startswith("flow.")}
    assert flow_params <= actual.keys()  # every flow parameter gets a gradient
    assert_same_gradients(expected, actual, TOLERANCE[dtype])


def test_div2k_4x_gradients_equal_standard_backprop():
    model = random_model("div2k-4x", 4, torch.float32)
    lr, hr = pair(model.config, 4)
    _, expected = gradients(model, lr, hr, memory_saving=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DriftWarning)
        _, actual = gradients(model, lr, hr, memory_saving=True)
    drifted = [w for w in caught if issubclass(w.category, DriftWarning)]
    assert len(drifted) <= 5  # the guard stores the inputs of a few nodes of this 54-node flow
    assert_same_gradients(expected, actual, TOLERANCE[torch.float32])


def test_first_batch_initialises_actnorms_as_the_standard_path():
    torch.manual_seed(0)
    fresh = SRFlow.from_preset("tiny-4x")
    reference = SRFlow.from_preset("tiny-4x")
    reference.load_state_dict(fresh.state_dict())
    lr, hr = pair(fresh.config, 8)
    _, expected = gradients(reference, lr, hr, memory_saving=False)
    _, actual = gradients(fresh, lr, hr, memory_saving=True)
    assert fresh.is_initialized
    assert_same_gradients(expected, actual, 1e-5)


@pytest.mark.parametrize("samples_per_condition", [1, 3])
def test_the_coupling_reconstructs_with_the_gradients_of_its_forward(samples_per_condition):
    """`reconstruct_for_backward` gives the inverse's input and the forward's gradients
    (input, condition, parameters) from one subnet evaluation."""
    torch.manual_seed(0)
    coupling = ConditionalAffineCoupling([(5, 6, 6)], [(4, 6, 6)], hidden=8).double()
    coupling((torch.randn(2, 5, 6, 6, dtype=torch.float64),),
             c=[torch.randn(2, 4, 6, 6, dtype=torch.float64)])  # ActNorm initialisation
    with torch.no_grad():
        coupling.subnet[4].weight.normal_(0, 0.1)  # the zero-initialised last layer
        coupling.subnet[4].bias.normal_(0, 0.1)
    u = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2 * samples_per_condition, 5, 6, 6, dtype=torch.float64)
    (z,), _ = coupling((x,), c=[u])
    grad_z, grad_logdet = torch.randn_like(z), torch.randn(len(x), dtype=torch.float64)
    params = list(coupling.parameters())

    leaf = x.clone().requires_grad_()
    (out,), logdet = coupling((leaf,), c=[u])
    expected = torch.autograd.grad([out, logdet], [leaf, u, *params], [grad_z, grad_logdet])
    with mock.patch.object(coupling.subnet, "finish", wraps=coupling.subnet.finish) as runs:
        [pieces], (out,), logdet = coupling.reconstruct_for_backward((z.detach(),), c=[u])
    assert runs.call_count == 1
    assert torch.allclose(torch.cat(pieces, 1), x, atol=1e-12)
    assert torch.allclose(out, z, atol=1e-12)
    grads = torch.autograd.grad([out, logdet], [*pieces, u, *params], [grad_z, grad_logdet])
    actual = [torch.cat(grads[:2], 1), *grads[2:]]
    for a, e in zip(actual, expected, strict=True):
        assert torch.allclose(a, e, rtol=1e-9, atol=1e-12)


def test_a_generic_freia_graph_with_a_split_and_conditions():
    """FrEIA's own modules, its data-dependent ActNorm included, in float64."""
    torch.manual_seed(0)

    def subnet(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, c_out, 3, padding=1))

    x = Ff.InputNode(2, 8, 8, name="x")
    conds = [Ff.ConditionNode(3, 4, 4, name="c1"), Ff.ConditionNode(5, 4, 4, name="c2")]
    nodes = [x, *conds, Ff.Node(x, Fm.HaarDownsampling, {}, name="haar")]
    nodes.append(Ff.Node(nodes[-1], Fm.ActNorm, {}, name="actnorm"))
    nodes.append(Ff.Node(nodes[-1], Fm.AllInOneBlock, {"subnet_constructor": subnet},
                         conditions=conds[0], name="allinone"))
    split = Ff.Node(nodes[-1], Fm.Split, {}, name="split")
    nodes += [split, Ff.OutputNode((split, 1), name="z1")]
    nodes.append(Ff.Node((split, 0), Fm.GLOWCouplingBlock, {"subnet_constructor": subnet},
                         conditions=conds, name="glow"))
    nodes.append(Ff.Node(nodes[-1], Fm.PermuteRandom, {}, name="permute"))
    nodes.append(Ff.OutputNode(nodes[-1], name="z2"))
    graph = Ff.GraphINN(nodes).double()
    inputs = [torch.randn(4, 2, 8, 8, dtype=torch.float64, requires_grad=True),
              torch.randn(4, 3, 4, 4, dtype=torch.float64, requires_grad=True),
              torch.randn(4, 5, 4, 4, dtype=torch.float64, requires_grad=True)]
    flow = MemorySavingFlow(graph)

    def run(forward):
        graph.zero_grad(set_to_none=True)
        for t in inputs:
            t.grad = None
        z, logdet = forward(inputs[0], c=inputs[1:])
        loss = sum((zi**2).sum() for zi in z) * 0.5 - logdet.sum()
        loss.backward()
        return float(loss.detach()), [t.grad.clone() for t in inputs] + [
            p.grad for p in graph.parameters()]

    run(flow)  # uninitialised ActNorm: the standard path, which inits it
    assert not graph.module_list[1].init_on_next_batch
    loss, expected = run(graph)
    again, actual = run(flow)
    assert again == pytest.approx(loss, rel=1e-12)
    assert [g is None for g in actual] == [g is None for g in expected]
    assert sum(g is not None for g in actual) > len(inputs) + 10
    for e, a in zip(expected, actual, strict=True):
        assert e is None or torch.allclose(a, e, rtol=1e-8, atol=1e-12)


def test_drift_guard_recovers_from_an_ill_conditioned_block():
    """A near-singular 1x1 conv loses the input in float32: the guard reports it (a part of
    a flow step is a unit of its own), gives the exact gradients and stores its input from
    then on."""
    model = random_model("tiny-4x", 8, torch.float32)
    invconv = model.flow_modules()["L2.step1"].invconv
    q1, q2 = torch.linalg.qr(torch.randn(invconv.channels, invconv.channels))[0], torch.eye(
        invconv.channels)
    singular = torch.ones(invconv.channels)
    singular[-1] = 1e-6
    invconv.set_weight_matrix(q1 @ torch.diag(singular) @ q2)
    lr, hr = pair(model.config, 8)
    _, expected = gradients(model, lr, hr, memory_saving=False)
    set_memory_saving(model, True)
    flow = model.memory_saving
    model.memory_saving = None
    for step in range(2):
        model.zero_grad(set_to_none=True)
        model.memory_saving = flow
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DriftWarning)
            model.nll(lr, hr).sum().backward()
        model.memory_saving = None
        drifts = [str(w.message) for w in caught if issubclass(w.category, DriftWarning)]
        if step == 0:
            assert drifts and all("L2.step1" in d for d in drifts), drifts
        else:
            assert not drifts  # its input is stored now
        assert flow.keep == {"L2.step1.invconv"}
        actual = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert_same_gradients({k: v for k, v in expected.items() if k in actual}, actual, 1e-4)


def test_an_exact_input_is_recomputed_from_the_last_stored_input_before_it():
    model = random_model("tiny-4x", 8, torch.float32)
    lr, hr = pair(model.config, 8)
    with torch.no_grad():
        cond = model.condition(lr)
    runner = MemorySavingFlow(model.flow)
    names = [unit.name for unit in runner.units]
    first, target = names.index("L2.step0.actnorm"), names.index("L2.step1.coupling")
    runner.keep = {names[first]}
    kept = runner.forward((hr,), cond)[3]
    with mock.patch.object(runner, "_call", wraps=runner._call) as calls:
        from_kept = runner.exact_inputs(runner.units[target], (hr,), cond, kept)
    assert calls.call_count == target - first
    from_inputs = runner.exact_inputs(runner.units[target], (hr,), cond, {})
    assert torch.equal(from_kept[0], from_inputs[0])


def test_a_frozen_encoder_gives_conditions_without_grad():
    model = random_model("tiny-4x", 8, torch.float32)
    lr, hr = pair(model.config, 8)
    with torch.no_grad():
        cond = model.condition(lr)
    grads = []
    for memory_saving in (False, True):
        set_memory_saving(model, memory_saving)
        model.zero_grad(set_to_none=True)
        model.nll(lr, hr, cond=cond).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert all(n.startswith("flow.") for n in grads[0])
    assert_same_gradients(*grads, 1e-4)


def test_memory_saving_does_not_combine_with_compile():
    with pytest.raises(ConfigError, match="compile"):
        resolve(TrainConfig, cli={"memory_saving": True, "compile": True})


def test_memory_saving_is_used_only_under_grad():
    model = random_model("tiny-4x", 8, torch.float32)
    lr, hr = pair(model.config, 8)
    expected = model.nll(lr, hr)
    set_memory_saving(model, True)
    with torch.no_grad():
        assert torch.equal(model.nll(lr, hr), expected)
    assert model.nll(lr, hr).grad_fn is not None
    assert torch.allclose(model.nll(lr, hr), expected, atol=1e-5)


@pytest.mark.parametrize(("name", "levels"), [("tiny-4x", 1), ("tiny-8x", 2)])
def test_each_upsampled_condition_is_checked_once_per_pass(name, levels):
    model = random_model(name, 8, torch.float32)
    lr, hr = pair(model.config, 8)
    model.memory_saving = MemorySavingFlow(model.flow, tolerance=1.0)  # no exact re-run
    with mock.patch("cinn_sr.blocks.upsampled.nearest_source",
                    wraps=upsampled.nearest_source) as checks:
        model.nll(lr, hr).sum().backward()
    assert checks.call_count == 2 * levels  # in the forward pass and in the backward pass


def ddp_worker(rank: int, port: int, results: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from cinn_sr.train import FlowObjective

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    model = random_model("tiny-4x", 8, torch.float32)
    lr, hr = pair(model.config, 8, seed=10 + rank)
    used = gradients(model, lr, hr, memory_saving=False)[1]
    for name, p in model.named_parameters():  # as the training loop: DDP waits for all
        p.requires_grad_(name in used)
        p.grad = None
    set_memory_saving(model, True)
    module = DistributedDataParallel(FlowObjective(model, "none"))
    module(hr, lr).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    torch.save(grads, os.path.join(results, f"grads{rank}.pt"))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_averages_the_memory_saving_gradients(tmp_path):
    mp.spawn(ddp_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    model = random_model("tiny-4x", 8, torch.float32)
    per_rank = [gradients(model, *pair(model.config, 8, seed=10 + r), False)[1] for r in (0, 1)]
    expected = {n: (g + per_rank[1][n]) / 4 for n, g in per_rank[0].items()
                if not n.startswith("condition")}  # mean over 2 images, then over 2 ranks
    for rank in (0, 1):
        actual = torch.load(tmp_path / f"grads{rank}.pt")
        assert_same_gradients(expected, actual, 1e-4)


def test_training_losses_equal_and_the_option_is_recorded(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CINN_SR_CACHE", str(cache))
    options = ["--iterations", "3", "--batch-size", "2", "--val-count", "1", "--device", "cpu",
               "--workers", "0", "--seed", "3"]
    result = CliRunner().invoke(main, ["train", *options, "--memory-saving", "--out",
                                       str(tmp_path / "saving")])
    assert result.exit_code == 0, result.output
    saved = read_toml(tmp_path / "saving" / "config.toml")
    assert saved["memory_saving"] is True
    standard = train(resolve(TrainConfig, cli={
        "iterations": 3, "batch_size": 2, "val_count": 1, "device": "cpu", "workers": 0,
        "seed": 3, "memory_saving": False, "out": str(tmp_path / "standard")}))
    assert read_toml(standard.out / "config.toml")["memory_saving"] is False

    def losses(out):
        return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]

    assert losses(tmp_path / "saving") == pytest.approx(losses(standard.out), rel=1e-5)
    again = resolve(TrainConfig, read_toml(tmp_path / "saving" / "config.toml"))
    assert again.memory_saving is True
    write_toml(again, tmp_path / "again.toml")
    assert resolve(TrainConfig, read_toml(tmp_path / "again.toml")).memory_saving is True
