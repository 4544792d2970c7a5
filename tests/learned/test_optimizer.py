"""LearnedOptimizer: Adam when untrained, the graph stage's effect, and the optimizer contract."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from torchopt_edu.learned import LearnedNet, LearnedOptimizer, load_shipped, parameter_graph
from torchopt_edu.learned.optimizer import CHUNK, COMPILED_MIN
from torchopt_edu.learned.weights import SHIPPED


def _model(dtype=torch.float32, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def _data(dtype=torch.float32):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(32, 5, generator=generator, dtype=dtype), torch.randn(
        32, 3, generator=generator, dtype=dtype
    )


def _train(model, optimizer, steps, data=None):
    x, y = data or _data(next(model.parameters()).dtype)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _trained_net(use_graph=True, seed=3) -> LearnedNet:
    """A net whose output layers are not zero (an untrained net is exactly Adam)."""
    torch.manual_seed(seed)
    net = LearnedNet(use_graph=use_graph)
    with torch.no_grad():
        for layer in [net.coord.out] + ([net.graph.out] if net.graph is not None else []):
            layer.weight.normal_(0, 0.3)
            layer.bias.normal_(0, 0.3)
    return net


def test_untrained_net_is_adam_in_float64():
    model = _model(torch.float64)
    reference = copy.deepcopy(model)
    _train(model, LearnedOptimizer(model.parameters(), lr=0.01, net=LearnedNet()), 25)
    _train(reference, torch.optim.Adam(reference.parameters(), lr=0.01), 25)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_slices_change_no_number(monkeypatch):
    """A tensor larger than CHUNK, updated slice by slice, gets the numbers of one slice."""
    import torchopt_edu.learned.optimizer as module

    net = _trained_net()
    finals = []
    for chunk in (module.CHUNK, 1 << 30):
        monkeypatch.setattr(module, "CHUNK", chunk)
        generator = torch.Generator().manual_seed(0)
        params = [
            nn.Parameter(torch.randn(n, generator=generator, dtype=torch.float64))
            for n in (CHUNK * 2 + 7, 5)
        ]
        optimizer = LearnedOptimizer(params, lr=0.1, net=net)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            optimizer.step()
        finals.append(torch.cat([p.detach() for p in params]))
    torch.testing.assert_close(finals[0], finals[1], rtol=0, atol=1e-14)


def test_graph_stage_changes_the_update_and_off_means_coordinate_only():
    net = _trained_net(use_graph=True)
    no_graph = LearnedNet(use_graph=False)
    no_graph.coord.load_state_dict(net.coord.state_dict())
    runs = {}
    for name, kwargs in {
        "graph": dict(net=net),
        "graph off": dict(net=net, use_graph=False),
        "coordinate net": dict(net=no_graph),
    }.items():
        model = _model(torch.float64)
        _train(model, LearnedOptimizer(model.parameters(), lr=0.01, graph=model, **kwargs), 10)
        runs[name] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert (runs["graph"] - runs["graph off"]).abs().max() > 1e-4
    torch.testing.assert_close(runs["graph off"], runs["coordinate net"], rtol=0, atol=0)


def test_graph_stage_reads_the_graph():
    """The same tensors with a different graph get different updates."""
    net = _trained_net(use_graph=True)
    finals = []
    for linked in (True, False):
        model = _model(torch.float64)
        graph = parameter_graph(model)
        if not linked:  # keep only the weight-bias edges
            keep = graph.edge_type == 0
            graph.edge_index, graph.edge_type = graph.edge_index[:, keep], graph.edge_type[keep]
        _train(model, LearnedOptimizer(model.parameters(), lr=0.01, net=net, graph=graph), 5)
        finals.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert (finals[0] - finals[1]).abs().max() > 1e-6


def test_state_dict_round_trip_resumes_exactly():
    net = _trained_net()
    model = _model()
    optimizer = LearnedOptimizer(model.parameters(), lr=0.01, net=net, graph=model)
    _train(model, optimizer, 5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    continued = _train(model, optimizer, 5)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model = _model(seed=99)
    resumed_model.load_state_dict(saved["model"])
    resumed = LearnedOptimizer(
        resumed_model.parameters(), lr=0.01, net=LearnedNet(), graph=resumed_model
    )
    resumed.load_state_dict(saved["optimizer"])  # also loads the learned weights
    assert _train(resumed_model, resumed, 5) == continued
    for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert resumed.state[next(resumed_model.parameters())]["step"] == 10


def test_bad_checkpoint_is_refused_and_nothing_changes():
    model = _model()
    optimizer = LearnedOptimizer(model.parameters(), net=_trained_net())
    _train(model, optimizer, 2)
    other = nn.Sequential(nn.Linear(5, 17), nn.Tanh(), nn.Linear(17, 3))
    other_optimizer = LearnedOptimizer(other.parameters(), net=_trained_net())
    _train(other, other_optimizer, 1)
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(
        ValueError, match=r"param group 0, parameter 0: state 'exp_avg_fast' has shape \(17, 5\)"
    ):
        optimizer.load_state_dict(other_optimizer.state_dict())
    with pytest.raises(ValueError, match="with a 'net' entry"):
        optimizer.load_state_dict(torch.optim.Adam(model.parameters()).state_dict())
    with pytest.raises(ValueError, match="net has shape"):
        optimizer.load_state_dict(
            LearnedOptimizer(model.parameters(), net=LearnedNet(hidden=4)).state_dict()
        )
    after = optimizer.state_dict()
    for key, value in before["state"][0].items():
        assert torch.equal(after["state"][0][key], value)


def test_bad_arguments_are_named():
    model = _model()
    with pytest.raises(ValueError, match="Invalid learning rate: lr=-1"):
        LearnedOptimizer(model.parameters(), lr=-1, net=LearnedNet())
    with pytest.raises(ValueError, match="eps must lie in"):
        LearnedOptimizer(model.parameters(), eps=0.0, net=LearnedNet())
    with pytest.raises(TypeError, match="net must be a LearnedNet or None, got dict"):
        LearnedOptimizer(model.parameters(), net={})
    with pytest.raises(TypeError, match="use_graph must be True or False"):
        LearnedOptimizer(model.parameters(), net=LearnedNet(), use_graph="yes")
    with pytest.raises(ValueError, match="use_graph=True needs a net with a graph stage"):
        LearnedOptimizer(model.parameters(), net=LearnedNet(use_graph=False), use_graph=True)
    with pytest.raises(ValueError, match=r"parameters not in the graph: \[2, 3\]"):
        LearnedOptimizer(model.parameters(), net=LearnedNet(), graph=parameter_graph(model[0]))
    with pytest.raises(TypeError, match="graph must be a ParameterGraph"):
        LearnedOptimizer(model.parameters(), net=LearnedNet(), graph="chain")
    with pytest.raises(TypeError, match="compiled must be True or False"):
        LearnedOptimizer(model.parameters(), net=LearnedNet(), compiled="yes")
    with pytest.raises(ValueError, match="parameter 0 is torch.int64"):
        LearnedOptimizer([torch.zeros(3, dtype=torch.long)], net=LearnedNet())


def test_closure_groups_and_missing_gradients():
    model = _model()
    frozen_before = model[2].weight.detach().clone()
    optimizer = LearnedOptimizer(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.0}],
        lr=0.01,
        net=_trained_net(),
        graph=model,
    )
    x, y = _data()

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first_before = model[0].weight.detach().clone()
    loss = optimizer.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0
    assert not torch.equal(model[0].weight, first_before)
    assert torch.equal(model[2].weight, frozen_before)  # lr 0 in its group

    # a parameter without a gradient is skipped and keeps its state; it joins again later
    model[2].bias.grad = None
    bias_state = optimizer.state[model[2].bias]["exp_avg"].clone()
    bias_before = model[2].bias.detach().clone()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    model[0].bias.grad = torch.ones_like(model[0].bias)
    model[2].weight.grad = torch.ones_like(model[2].weight)
    optimizer.step()
    assert torch.equal(model[2].bias, bias_before)
    assert torch.equal(optimizer.state[model[2].bias]["exp_avg"], bias_state)
    assert optimizer.state[model[2].bias]["step"] == 1
    assert optimizer.state[model[0].bias]["step"] == 2
    optimizer.step(closure)
    assert optimizer.state[model[2].bias]["step"] == 2


def test_sparse_gradients_are_refused():
    embedding = nn.Embedding(10, 3, sparse=True)
    optimizer = LearnedOptimizer(embedding.parameters(), net=LearnedNet())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        optimizer.step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    net = _trained_net()
    cpu = _model(torch.float64)
    gpu = copy.deepcopy(cpu).cuda()
    _train(cpu, LearnedOptimizer(cpu.parameters(), lr=0.01, net=net, graph=cpu), 5)
    x, y = _data(torch.float64)
    _train(
        gpu,
        LearnedOptimizer(gpu.parameters(), lr=0.01, net=net, graph=gpu),
        5,
        (x.cuda(), y.cuda()),
    )
    for p, q in zip(cpu.parameters(), gpu.parameters(), strict=True):
        assert q.is_cuda
        torch.testing.assert_close(p, q.cpu(), rtol=1e-9, atol=1e-12)


def test_shipped_weights_load_with_weights_only_and_are_the_default():
    for graph, path in SHIPPED.items():
        contents = torch.load(path, map_location="cpu", weights_only=True)
        assert contents["config"]["use_graph"] is graph
        assert path.stat().st_size < 100_000
    model = _model()
    default = LearnedOptimizer(model.parameters())
    shipped = load_shipped()
    assert default.use_graph
    for key, value in shipped.state_dict().items():
        assert torch.equal(default.net.state_dict()[key], value)
    assert not LearnedOptimizer(model.parameters(), use_graph=False).net.use_graph
    trained = any(v.abs().sum() > 0 for v in shipped.graph.out.state_dict().values())
    assert trained, "the shipped weights are meta-trained, not the untrained (Adam) net"


def test_strided_parameter_gets_the_numbers_of_a_contiguous_one():
    """A non-contiguous parameter (updated through a copy) moves as its contiguous twin."""
    net = _trained_net()
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    grads = [torch.randn(4, 6, generator=generator, dtype=torch.float64) for _ in range(3)]
    strided = nn.Parameter(data.clone()).t()  # a [4, 6] view with strides (1, 4)
    strided = strided.detach().requires_grad_()
    assert not strided.is_contiguous()
    twin = nn.Parameter(data.t().contiguous())
    for p in (strided, twin):
        optimizer = LearnedOptimizer([p], lr=0.1, net=net)
        for grad in grads:
            p.grad = grad.clone()
            optimizer.step()
    assert not strided.is_contiguous()
    torch.testing.assert_close(strided, twin, rtol=0, atol=1e-14)
    assert (twin - data.t()).abs().max() > 1e-3  # they moved


def _compiled_run(dtype, compiled, steps=3, optimizer_state=None, start=None):
    """Two tensors, one large enough for the compiled kernel and one left to the slices."""
    generator = torch.Generator().manual_seed(0)
    params = [
        nn.Parameter(torch.randn(n, generator=generator, dtype=dtype))
        for n in (COMPILED_MIN + 5, 7)
    ]
    if start is not None:
        with torch.no_grad():
            for p, value in zip(params, start, strict=True):
                p.copy_(value)
    optimizer = LearnedOptimizer(params, lr=0.1, net=_trained_net(), compiled=compiled)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    for step in range(steps):
        grads = torch.Generator().manual_seed(step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=grads, dtype=dtype)
        optimizer.step()
    return params, optimizer


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_compiled_gives_the_numbers_of_the_slices(dtype, atol):
    eager_params, eager = _compiled_run(dtype, compiled=False)
    compiled_params, compiled = _compiled_run(dtype, compiled=True)
    for p, q in zip(eager_params, compiled_params, strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=atol)
        for key, value in eager.state[p].items():
            torch.testing.assert_close(compiled.state[q][key], value, rtol=0, atol=atol)


def test_compiled_resumes_exactly():
    params, optimizer = _compiled_run(torch.float32, compiled=True, steps=2)
    saved = copy.deepcopy(optimizer.state_dict())
    start = [p.detach().clone() for p in params]
    for step in range(2):  # the same gradients as the resumed run's
        grads = torch.Generator().manual_seed(step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=grads)
        optimizer.step()
    resumed, _ = _compiled_run(
        torch.float32, compiled=True, steps=2, optimizer_state=saved, start=start
    )
    for p, q in zip(params, resumed, strict=True):
        assert torch.equal(p, q)


def test_compile_failure_is_named_and_changes_nothing(monkeypatch):
    """Without a working compiler the first step raises before any parameter or state moves."""
    from torch._inductor.exc import InductorError

    import torchopt_edu.learned.optimizer as module

    def no_compiler(function, **options):
        def build(*args):
            raise InductorError(RuntimeError("no C++ compiler found"), None)

        return build

    monkeypatch.setattr(module.coordinate_kernel, "_compiled", None)
    monkeypatch.setattr(torch, "compile", no_compiler)
    module._build_coordinate_kernel.cache_clear()
    model = _model()
    before = copy.deepcopy(model.state_dict())
    optimizer = LearnedOptimizer(model.parameters(), net=_trained_net(), compiled=True)
    x, y = _data()
    nn.functional.mse_loss(model(x), y).backward()
    with pytest.raises(
        RuntimeError,
        match=r"could not build the kernel coordinate_kernel for torch.float32 on cpu .*"
        r"use compiled=False. Cause: .*no C\+\+ compiler found",
    ):
        optimizer.step()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    for state in optimizer.state.values():
        assert state["step"] == 0
        assert all(not state[key].any() for key in module.STATE_KEYS)


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))])
def test_a_copied_optimizer_steps_its_own_parameters_like_the_original(copier):
    """The copy keeps the net, the graph and the options, and updates its own parameters."""
    model = _model(torch.float64)
    optimizer = LearnedOptimizer(model.parameters(), graph=model)
    _train(model, optimizer, 2, data=_data(torch.float64))
    twin = copier({"model": model, "optimizer": optimizer})
    _train(model, optimizer, 3, data=_data(torch.float64))
    _train(twin["model"], twin["optimizer"], 3, data=_data(torch.float64))
    for mine, theirs in zip(model.parameters(), twin["model"].parameters(), strict=True):
        assert torch.equal(mine, theirs)


def _stepped_learned():
    model = _model(torch.float64)
    optimizer = LearnedOptimizer(model.parameters(), graph=model)
    _train(model, optimizer, 1, data=_data(torch.float64))
    return model, optimizer


def test_a_step_without_any_gradient_does_nothing():
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    LearnedOptimizer(model.parameters(), graph=model).step()  # max() of nothing raised
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_gradient_is_refused_before_it_spreads_through_the_graph(bad):
    model, optimizer = _stepped_learned()
    before = copy.deepcopy(optimizer.state_dict())
    params = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    nn.functional.mse_loss(model(_data(torch.float64)[0]), _data(torch.float64)[1]).backward()
    model[0].weight.grad[0, 0] = bad
    with pytest.raises(ValueError, match=r"gradient of parameter 0 \(0.weight.*NaN or infinite"):
        optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), params, strict=True))
    after = optimizer.state_dict()
    for key, state in before["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(after["state"][key][name]), torch.as_tensor(value))


def test_a_zero_size_parameter_keeps_the_others_finite():
    model = _model()
    empty = nn.Parameter(torch.zeros(0))
    optimizer = LearnedOptimizer([*model.parameters(), empty])
    _train(model, optimizer, 1)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_a_group_outside_the_graph_or_with_a_bad_lr_is_refused():
    model, optimizer = _stepped_learned()
    with pytest.raises(ValueError, match="param group 1: parameters of shapes \\[\\(5,\\)\\]"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.randn(5))]})
    with pytest.raises(ValueError, match="param group 0: Invalid learning rate"):
        LearnedOptimizer([{"params": model.parameters(), "lr": float("nan")}], graph=model)
    assert len(optimizer.param_groups) == 1


def test_a_graph_with_edges_outside_its_nodes_is_refused():
    from torchopt_edu.learned.graph import ParameterGraph

    model = _model()
    params = list(model.parameters())
    graph = ParameterGraph(
        list("abcd"), params, [0, 0, 1, 1], torch.tensor([[0], [10]]), torch.tensor([1])
    )
    with pytest.raises(ValueError, match="edge_index must be \\[2, E\\] node indices below 4"):
        LearnedOptimizer(params, graph=graph)


@pytest.mark.parametrize(
    ("corrupt", "words"),
    [
        (
            lambda s: s["net"]["weights"].__setitem__("coord.inp.weight", torch.zeros(1)),
            "weights do not fit",
        ),
        (
            lambda s: next(iter(s["state"].values())).__setitem__("step", torch.tensor(-5.0)),
            "whole number >= 0",
        ),
        (lambda s: next(iter(s["state"].values()))["exp_avg_sq"].fill_(-1.0), "finite and >= 0"),
        (lambda s: s["param_groups"][0].__setitem__("lr", "x"), "param group 0"),
    ],
)
def test_a_corrupted_checkpoint_is_refused_and_nothing_changes(corrupt, words):
    model, optimizer = _stepped_learned()
    saved = copy.deepcopy(optimizer.state_dict())
    other_model, other = _stepped_learned()
    _train(other_model, other, 2, data=_data(torch.float64))  # a later point of training
    bad = copy.deepcopy(other.state_dict())
    corrupt(bad)
    with pytest.raises(ValueError, match=words):
        optimizer.load_state_dict(bad)
    after = optimizer.state_dict()
    for key, state in saved["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(after["state"][key][name]), torch.as_tensor(value))
    for name, weight in saved["net"]["weights"].items():
        assert torch.equal(after["net"]["weights"][name], weight)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "cannot be read as a weights file"),
        (None, "cannot be read as a weights file"),  # the shipped file, truncated
        ("config", "config must hold hidden"),
        ("nan", "weights hold NaN"),
    ],
)
def test_a_damaged_weights_file_is_named(content, words, tmp_path):
    from torchopt_edu.learned.weights import load_net, save_net

    path = tmp_path / "net.pt"
    if content == "config":
        torch.save({"config": {"hidden": 8, "version": 2}, "weights": {}}, path)
    elif content == "nan":
        net = LearnedNet()
        with torch.no_grad():
            next(net.parameters()).fill_(float("nan"))
        save_net(net, path)
    elif content is None:
        raw = SHIPPED[True].read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path}.*{words}|{words}"):
        load_net(path)


@pytest.mark.parametrize("hidden", [0, -1, 2.5])
def test_a_net_without_hidden_units_is_refused(hidden):
    with pytest.raises((TypeError, ValueError), match="hidden"):
        LearnedNet(hidden=hidden)
