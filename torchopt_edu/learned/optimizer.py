"""``LearnedOptimizer``: a per-coordinate network modulated per tensor by a graph network.

The update of coordinate ``i`` of parameter tensor ``k`` at step ``t``, with gradient ``g``:

.. math::
    m^{(b)} &\\leftarrow b\\, m^{(b)} + (1 - b)\\, g \\quad (b \\in \\{0.5, 0.9, 0.99\\}), \\qquad
    v \\leftarrow \\beta_2 v + (1 - \\beta_2)\\, g^2 \\\\
    \\sigma &= \\sqrt{v / (1 - \\beta_2^t)} + \\epsilon, \\qquad
    \\hat m^{(b)} = m^{(b)} / (1 - b^t) \\\\
    x &= [\\, g / \\mathrm{rms}(g_k),\\ \\theta / \\mathrm{rms}(\\theta_k),\\
          \\hat m^{(0.5)} / \\sigma,\\ \\hat m^{(0.9)} / \\sigma,\\ \\hat m^{(0.99)} / \\sigma,\\
          g / \\sigma \\,] \\\\
    [d, r] &= \\mathrm{MLP}(x, t) \\quad \\text{(per coordinate)}, \\qquad
    [s_k, \\mu_k] = \\mathrm{GNN}(z, \\text{parameter graph})_k \\quad \\text{(per tensor)} \\\\
    a &= \\hat m^{(0.9)} / \\sigma + \\mu_k (\\hat m^{(0.99)} - \\hat m^{(0.9)}) / \\sigma \\\\
    \\theta &\\leftarrow \\theta - \\gamma_k\\, e^{s_k}\\, e^{\\tanh r}\\, (a + \\tanh d)

where ``gamma_k`` is the group's ``lr`` and ``z`` the tensors' statistics
(:func:`node_features`). With the graph stage off (``use_graph=False``), ``s_k = mu_k = 0``;
with both networks' output layers at zero (an untrained :class:`LearnedNet`),
``d = r = s = mu = 0`` and the update is Adam's with ``betas=(0.9, 0.999)``: meta-training
(:mod:`torchopt_edu.learned.meta`) starts from Adam and learns corrections, bounded by the
``tanh``\\ s, which keeps the optimizer from straying far on workloads it never saw.

The fast path works tensor by tensor, in place on the parameters (the gradients are read where
they are), in slices of at most ``CHUNK`` coordinates (the state lives in one ``[4, N]`` buffer
per device and dtype; the parameters' state tensors are views of its rows). What is the same
for a whole tensor is folded into the network's weights once per step: the feature scales
``1 / rms(g_k)``, ``1 / rms(theta_k)`` and the bias corrections go into the first layer's
weights, both biases into the matrices, so that a slice computes only
``x' = [g, theta, m^{(b)} / sigma', g / sigma', 1]`` and runs the network as two matrix
products into preallocated buffers (see ``LearnedOptimizer._update`` for the folded form).

Defaults: ``lr=1e-3``, ``eps=1e-8``, the shipped meta-trained weights
(:func:`~torchopt_edu.learned.weights.load_shipped`). Use it to try what a learned optimizer
does on your model; see the README for where it beats Adam and where it loses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from torchopt_edu.learned.graph import ParameterGraph, chain_graph, parameter_graph
from torchopt_edu.learned.nets import (
    BETA2,
    BETAS,
    COORD_FEATURES,
    NODE_FEATURES,
    LearnedNet,
    time_features,
)
from torchopt_edu.optim._checks import as_float, check_flag, check_lr, check_number

#: Coordinates per slice of the per-coordinate network. Each slice costs ~17 kernel launches;
#: measured at 10M parameters in 50k-element tensors, one thread: 16k-coordinate slices (which
#: stay in a 2 MiB L2 cache) 226 ms per step, 32k 216 ms, one slice per tensor 205 ms.
CHUNK = 1 << 16
#: State keys: momenta at BETAS (fast, medium = Adam's exp_avg, slow) and the second moment.
STATE_KEYS = ("exp_avg_fast", "exp_avg", "exp_avg_slow", "exp_avg_sq")


@dataclass
class _Slab:
    """Parameters of one device and dtype that have gradients, with flat buffers."""

    params: list[Tensor]
    groups: list[dict[str, Any]]
    nodes: Tensor  # graph node index of each tensor
    sizes: list[int]
    moments: Tensor  # [4, N]
    steps: Tensor  # [K], float32 on the CPU (as torch.optim keeps "step")
    buffers: _SliceBuffers | None = None  # of the per-coordinate network, made at the first step


class LearnedOptimizer(Optimizer):
    """A meta-learned optimizer: Adam-like statistics, a per-coordinate MLP, a graph stage.

    Args:
        params: parameters or param groups, as for any ``torch.optim.Optimizer``.
        lr: step size ``gamma`` (the learned scales multiply it), ``>= 0``.
        eps: added to ``sigma``, ``> 0``.
        net: the weights; ``None`` loads the shipped meta-trained ones (with the graph stage, or
            the per-coordinate-only ones when ``use_graph=False``). The optimizer keeps a copy.
        graph: the parameter graph: a :class:`ParameterGraph`, a model (its graph is built with
            :func:`parameter_graph`), or ``None`` to build :func:`chain_graph` from the
            parameters in the order given.
        use_graph: run the graph stage; ``None`` means "if ``net`` has one". ``False`` with a
            net that has one is the ablation "the same optimizer without the graph stage".

    Parameters must be dense, real and floating point; they stay where they are (CPU or CUDA),
    and the networks are copied to their device and dtype. ``state_dict()`` also holds the
    net's weights, so a resumed run continues exactly.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        *,
        eps: float = 1e-8,
        net: LearnedNet | None = None,
        graph: ParameterGraph | nn.Module | None = None,
        use_graph: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_number("eps", eps, 0.0, open_low=True)
        super().__init__(params, {"lr": lr, "eps": eps})
        all_params = [p for group in self.param_groups for p in group["params"]]
        for index, p in enumerate(all_params):
            if p.is_sparse or p.is_complex() or not p.is_floating_point():
                raise ValueError(
                    f"LearnedOptimizer supports dense real floating-point parameters; "
                    f"parameter {index} is {p.dtype}{' (sparse)' if p.is_sparse else ''}"
                )
        if net is not None and not isinstance(net, LearnedNet):
            raise TypeError(f"net must be a LearnedNet or None, got {type(net).__name__}")
        if use_graph is not None:
            use_graph = check_flag("use_graph", use_graph)
        if net is None:
            from torchopt_edu.learned.weights import load_shipped

            net = load_shipped(graph=use_graph is not False)
        if use_graph and not net.use_graph:
            raise ValueError(
                "use_graph=True needs a net with a graph stage (LearnedNet(use_graph=True))"
            )
        self.use_graph = net.use_graph if use_graph is None else use_graph
        self.net = copy.deepcopy(net).requires_grad_(False).to(all_params[0].device)
        self.graph = self._check_graph(graph, all_params)
        self._node_of = {id(p): k for k, p in enumerate(self.graph.params)}
        self._edge_index = self.graph.edge_index.to(all_params[0].device)
        self._edge_attr = nn.functional.one_hot(self.graph.edge_type, 3).to(
            self._edge_index.device, torch.float32
        )
        self._slabs: dict[tuple[torch.device, torch.dtype], _Slab] = {}
        #: ``(s, mu)`` of the last step, one entry per graph node (``graph.names`` order).
        self.last_modulation: tuple[Tensor, Tensor] | None = None

    @staticmethod
    def _check_graph(graph: object, params: list[Tensor]) -> ParameterGraph:
        """The parameter graph, checked to hold exactly the optimizer's parameters."""
        if graph is None:
            return chain_graph(params)
        if isinstance(graph, nn.Module):
            graph = parameter_graph(graph)
        if not isinstance(graph, ParameterGraph):
            raise TypeError(
                f"graph must be a ParameterGraph, an nn.Module or None, got {type(graph).__name__}"
            )
        in_graph = {id(p) for p in graph.params}
        missing = [i for i, p in enumerate(params) if id(p) not in in_graph]
        if missing or len(in_graph) != len({id(p) for p in params}):
            raise ValueError(
                f"graph must have one node per optimized parameter: {graph.num_nodes} nodes for "
                f"{len(params)} parameters, parameters not in the graph: {missing[:10]}"
            )
        return graph

    # ---------------------------------------------------------------------------------
    # checkpoints

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict plus ``"net"``: the learned weights and ``use_graph``."""
        state = super().state_dict()
        state["net"] = {
            "config": self.net.config(),
            "use_graph": self.use_graph,
            "weights": {k: v.clone() for k, v in self.net.state_dict().items()},
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; every tensor's shape is checked before anything changes."""
        if not isinstance(state_dict, dict) or "net" not in state_dict:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(
                "LearnedOptimizer.load_state_dict expects what LearnedOptimizer.state_dict() "
                f"returns (with a 'net' entry), got {got}"
            )
        saved_net = state_dict["net"]
        if saved_net["config"] != self.net.config():
            raise ValueError(
                f"the checkpoint's net has shape {saved_net['config']}, this optimizer's "
                f"{self.net.config()}"
            )
        self._check_state_shapes(state_dict)
        rest = {k: v for k, v in state_dict.items() if k != "net"}
        super().load_state_dict(rest)
        self.net.load_state_dict(saved_net["weights"])
        self.use_graph = bool(saved_net["use_graph"])
        self._slabs = {}  # rebuilt from the loaded state at the next step

    def _check_state_shapes(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict.get("param_groups", [])
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"the checkpoint has {len(groups)} param groups, this optimizer "
                f"{len(self.param_groups)}"
            )
        for g, (group, saved) in enumerate(zip(self.param_groups, groups, strict=True)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"param group {g}: {len(saved['params'])} parameters in the checkpoint, "
                    f"{len(group['params'])} here"
                )
            for i, (p, pid) in enumerate(zip(group["params"], saved["params"], strict=True)):
                entry = state_dict["state"].get(pid, {})
                for key in STATE_KEYS:
                    if key in entry and tuple(entry[key].shape) != tuple(p.shape):
                        raise ValueError(
                            f"param group {g}, parameter {i}: state {key!r} has shape "
                            f"{tuple(entry[key].shape)}, the parameter {tuple(p.shape)}"
                        )

    # ---------------------------------------------------------------------------------
    # the step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        kinds: dict[tuple[torch.device, torch.dtype], list[tuple[Tensor, dict[str, Any]]]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LearnedOptimizer does not support sparse gradients")
                kinds.setdefault((p.device, p.dtype), []).append((p, group))
        slabs = [self._slab(kind, members) for kind, members in kinds.items()]
        for slab in slabs:
            slab.steps.add_(1)
        stats = [tensor_rms(slab) for slab in slabs]
        modulation = self._modulation(slabs, stats)
        for slab, rms, (scale, mu) in zip(slabs, stats, modulation, strict=True):
            self._update(slab, rms, scale, mu)
        return loss

    def _slab(self, kind: tuple[torch.device, torch.dtype], members: list) -> _Slab:
        """The slab of these parameters: cached, or built (state copied in) when they changed."""
        params = [p for p, _ in members]
        slab = self._slabs.get(kind)
        if slab is not None and len(slab.params) == len(params):
            if all(a is b for a, b in zip(slab.params, params, strict=True)):
                slab.groups = [g for _, g in members]
                return slab
        device, dtype = kind
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        moments = torch.zeros(4, total, device=device, dtype=dtype)
        steps = torch.zeros(len(params))
        offset = 0
        for k, p in enumerate(params):
            state = self.state[p]
            for row, key in enumerate(STATE_KEYS):
                view = moments[row, offset : offset + sizes[k]].view_as(p)
                if key in state:
                    view.copy_(state[key])
                state[key] = view
            if "step" in state:
                steps[k] = float(state["step"])
            state["step"] = steps[k]
            offset += sizes[k]
        slab = _Slab(
            params=params,
            groups=[g for _, g in members],
            nodes=torch.tensor([self._node_of[id(p)] for p in params]),
            sizes=sizes,
            moments=moments,
            steps=steps,
        )
        self._slabs[kind] = slab
        return slab

    def _modulation(self, slabs: list[_Slab], stats: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """``(log step scale s_k, momentum mix mu_k)`` of every slab's tensors."""
        if not self.use_graph:
            return [
                (torch.zeros(len(slab.params)), torch.zeros(len(slab.params))) for slab in slabs
            ]
        device = self._edge_index.device
        z = torch.zeros(self.graph.num_nodes, NODE_FEATURES, device=device)
        for slab, rms in zip(slabs, stats, strict=True):
            z[slab.nodes.to(device)] = node_features(rms, slab).to(device)
        step = max(float(slab.steps.max()) for slab in slabs)
        z[:, -3:] = time_features(step, device)
        scale, mu = self.net.graph(z, self._edge_index, self._edge_attr)
        self.last_modulation = (scale.cpu(), mu.cpu())
        return [
            (scale[slab.nodes.to(device)].cpu(), mu[slab.nodes.to(device)].cpu()) for slab in slabs
        ]

    def _update(self, slab: _Slab, rms: Tensor, scale: Tensor, mu: Tensor) -> None:
        """Moments, features, the per-coordinate network and the update, slice by slice.

        With ``sigma = sqrt(c_2) sigma'``, ``sigma' = sqrt(v) + eps / sqrt(c_2)`` and
        ``c_2 = 1 / (1 - beta_2^t)`` (torch's Adam computes its denominator so), the features
        are ``x = f_k * x'`` with ``x' = [g, theta, m^{(b)} / sigma', g / sigma', 1]`` and
        per-tensor factors ``f_k = [1 / rms(g_k), 1 / rms(theta_k), c_b / sqrt(c_2),
        1 / sqrt(c_2), 1]`` (``c_b = 1 / (1 - b^t)``). The first layer's weights take the
        factors and the bias, ``W_{1,k} = [W_1 diag(f_k), b_1; 0, 1]``: its last hidden unit is
        ``relu(1) = 1``, so that ``W_2' = [W_2, b_2]`` adds the second layer's bias. The
        factors are computed in float64 (the bias corrections cancel catastrophically in
        float32).
        """
        device, dtype = slab.moments.device, slab.moments.dtype
        t = slab.steps.double()
        c_fast, c_mid, c_slow = (1.0 / (1.0 - beta**t) for beta in BETAS)
        root_c2 = (1.0 / (1.0 - BETA2**t)).sqrt()
        mu = mu.double()
        lr = torch.tensor([as_float(g["lr"]) for g in slab.groups], dtype=torch.float64)
        eps = torch.tensor([as_float(g["eps"]) for g in slab.groups], dtype=torch.float64)
        ones = torch.ones_like(t)
        factors = torch.stack(
            [
                1.0 / (rms[0].double() + 1e-30),
                1.0 / (rms[1].double() + 1e-8),
                c_fast / root_c2,
                c_mid / root_c2,
                c_slow / root_c2,
                1.0 / root_c2,
                ones,
            ],
            dim=1,
        )
        w1, b1, w2, b2 = (w.double() for w in self.net.coord.layers(float(t.max())))
        hidden = w1.shape[1]
        w1_k = torch.zeros(len(slab.params), hidden + 1, COORD_FEATURES + 1, dtype=torch.float64)
        w1_k[:, :hidden] = torch.cat([w1.t(), b1.view(-1, 1)], dim=1) * factors.unsqueeze(1)
        w1_k[:, hidden, COORD_FEATURES] = 1.0
        w2_b2 = torch.cat([w2.t(), b2.view(-1, 1)], dim=1).to(device, dtype)
        scalars = torch.stack(
            [
                eps / root_c2,
                (1.0 - mu) * c_mid / root_c2,
                mu * c_slow / root_c2,
                -lr * scale.double().exp(),
            ],
            dim=1,
        ).tolist()
        weights = (1.0 - torch.tensor(BETAS, dtype=torch.float64).view(3, 1)).to(device, dtype)
        size = min(CHUNK, max(slab.sizes))
        if slab.buffers is None or slab.buffers.size < size:
            slab.buffers = _SliceBuffers(size, hidden, device, dtype)
        offset = 0
        for k, (p, w1_b1) in enumerate(zip(slab.params, w1_k.to(device, dtype), strict=True)):
            g = p.grad.reshape(-1)
            theta = p.view(-1) if p.is_contiguous() else p.reshape(-1)  # a copy if strided
            for start in range(0, theta.numel(), CHUNK):
                end = min(start + CHUNK, theta.numel())
                _coordinate_update(
                    g[start:end],
                    theta[start:end],
                    slab.moments[:, offset + start : offset + end],
                    (w1_b1, w2_b2),
                    weights,
                    scalars[k],
                    slab.buffers,
                )
            if theta.data_ptr() != p.data_ptr():  # updated a copy of a strided parameter
                p.copy_(theta.view_as(p))
            offset += theta.numel()


class _SliceBuffers:
    """Preallocated buffers of a slice of up to ``size`` coordinates: the features
    ``x' [F + 1, size]`` (the last row is the constant 1), the hidden units ``[H + 1, size]``,
    the outputs ``[2, size]`` and ``sigma' [size]``."""

    def __init__(self, size: int, hidden: int, device: torch.device, dtype: torch.dtype) -> None:
        self.size = size
        self.x = torch.empty(COORD_FEATURES + 1, size, device=device, dtype=dtype)
        self.x[COORD_FEATURES] = 1.0
        self.hidden = torch.empty(hidden + 1, size, device=device, dtype=dtype)
        self.out = torch.empty(2, size, device=device, dtype=dtype)
        self.sigma = torch.empty(size, device=device, dtype=dtype)

    def views(self, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x', hidden, out, sigma')`` for a slice of ``n`` coordinates (their first columns)."""
        return self.x[:, :n], self.hidden[:, :n], self.out[:, :n], self.sigma[:n]


def tensor_rms(slab: _Slab) -> Tensor:
    """``[4, K]``: the rms of each tensor's gradient, parameter, ``m^(0.9)`` and ``m^(0.99)``.

    One multi-tensor norm over the ``4K`` tensors (the momenta are the previous step's), as
    float32 on the CPU.
    """
    momenta = [*slab.moments[1].split(slab.sizes), *slab.moments[2].split(slab.sizes)]
    tensors = [p.grad for p in slab.params] + slab.params + momenta
    norms = torch.stack(torch._foreach_norm(tensors)).float().cpu().view(4, -1)
    return norms / torch.tensor(slab.sizes, dtype=torch.float32).sqrt()


def node_features(rms: Tensor, slab: _Slab) -> Tensor:
    """The graph stage's input ``z [K, 9]`` from :func:`tensor_rms`'s statistics.

    ``[log rms g_k - mean, log rms theta_k - mean, log10(rms theta_k + 1e-3),
    rms m^(0.9)_k / rms g_k, rms m^(0.99)_k / rms g_k, 1 if the tensor is 1-D, time(t)]``,
    the momenta being those of the previous step (zero at the first); the three time features
    are zero here and filled in by the caller (they are the same for every tensor).
    """
    rms_g = rms[0].clamp_min(1e-30)
    rms_p = rms[1]
    log_g, log_p = rms_g.log(), (rms_p + 1e-12).log()
    is_vector = torch.tensor([float(p.dim() <= 1) for p in slab.params])
    columns = [
        log_g - log_g.mean(),
        log_p - log_p.mean(),
        (rms_p + 1e-3).log10(),
        (rms[2] / rms_g).clamp_max(10.0),
        (rms[3] / rms_g).clamp_max(10.0),
        is_vector,
        *torch.zeros(3, len(slab.params)),
    ]
    return torch.stack(columns, dim=1)


def _coordinate_update(
    g: Tensor,
    theta: Tensor,
    moments: Tensor,
    layers: tuple[Tensor, Tensor],
    weights: Tensor,
    scalars: list[float],
    buffers: _SliceBuffers,
) -> None:
    """The update of one slice of one tensor, in place (the equations of the module docstring).

    ``layers = (W_{1,k}, W_2')`` and ``scalars = (eps / sqrt(c_2), alpha_k, beta_k,
    -gamma_k e^{s_k})`` as :meth:`LearnedOptimizer._update` folds them, with
    ``alpha_k = (1 - mu_k) c_{0.9} / sqrt(c_2)`` and ``beta_k = mu_k c_{0.99} / sqrt(c_2)``.
    """
    w1_b1, w2_b2 = layers
    eps, alpha, beta, step = scalars
    x, hidden, out, sigma = buffers.views(g.numel())
    moments[:3].lerp_(g.expand(3, -1), weights)
    moments[3].mul_(BETA2).addcmul_(g, g, value=1.0 - BETA2)
    torch.sqrt(moments[3], out=sigma).add_(eps)
    x[0].copy_(g)
    x[1].copy_(theta)
    torch.div(moments[:3], sigma, out=x[2:5])
    torch.div(g, sigma, out=x[5])
    torch.mm(w1_b1, x, out=hidden).relu_()
    torch.mm(w2_b2, hidden, out=out).tanh_()  # [tanh d, tanh r]
    direction, magnitude = out[0], out[1].exp_()
    direction.add_(x[3], alpha=alpha).add_(x[4], alpha=beta)  # a + tanh d
    theta.addcmul_(direction, magnitude, value=step)
