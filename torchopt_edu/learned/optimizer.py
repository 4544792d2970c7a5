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

The fast path: the parameters and gradients of one device and dtype are copied into flat
buffers, the state lives in one ``[4, N]`` buffer (the parameters' state tensors are views of
its rows), and the per-coordinate network runs as two matrix products over slices of
``CHUNK`` coordinates, small enough to stay in the CPU's cache.

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
from torchopt_edu.learned.nets import BETA2, BETAS, NODE_FEATURES, LearnedNet, time_features
from torchopt_edu.optim._checks import as_float, check_flag, check_lr, check_number

#: Coordinates per slice of the batched per-coordinate network (2**14 x 6 features x 4 bytes
#: = 384 KiB: the features, hidden units and outputs of a slice fit in a core's L2 cache).
CHUNK = 1 << 14
#: State keys: momenta at BETAS (fast, medium = Adam's exp_avg, slow) and the second moment.
STATE_KEYS = ("exp_avg_fast", "exp_avg", "exp_avg_slow", "exp_avg_sq")
#: Columns of the per-tensor table gathered per coordinate.
_INV_RMS_G, _INV_RMS_P, _C_FAST, _C_MID, _C_SLOW, _C_SQ, _STEP, _MU = range(8)


@dataclass
class _Slab:
    """Parameters of one device and dtype that have gradients, with flat buffers."""

    params: list[Tensor]
    groups: list[dict[str, Any]]
    nodes: Tensor  # graph node index of each tensor
    segment: Tensor  # tensor index of each coordinate [N]
    sizes: list[int]
    grad: Tensor
    param: Tensor
    update: Tensor
    moments: Tensor  # [4, N]
    steps: Tensor  # [K], float32 on the CPU (as torch.optim keeps "step")


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
            torch.cat([p.grad.reshape(-1) for p in slab.params], out=slab.grad)
            torch.cat([p.reshape(-1) for p in slab.params], out=slab.param)
            slab.steps.add_(1)
        stats = [tensor_rms(slab) for slab in slabs]
        modulation = self._modulation(slabs, stats)
        for slab, rms, (scale, mu) in zip(slabs, stats, modulation, strict=True):
            self._update(slab, rms, scale, mu)
            torch._foreach_add_(slab.params, self._views(slab.update, slab))
        return loss

    @staticmethod
    def _views(flat: Tensor, slab: _Slab) -> list[Tensor]:
        return [v.view_as(p) for v, p in zip(flat.split(slab.sizes), slab.params, strict=True)]

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
        segment = torch.repeat_interleave(
            torch.arange(len(params), device=device), torch.tensor(sizes, device=device)
        )
        slab = _Slab(
            params=params,
            groups=[g for _, g in members],
            nodes=torch.tensor([self._node_of[id(p)] for p in params]),
            segment=segment,
            sizes=sizes,
            grad=torch.empty(total, device=device, dtype=dtype),
            param=torch.empty(total, device=device, dtype=dtype),
            update=torch.empty(total, device=device, dtype=dtype),
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
        """Moments, features, the per-coordinate network and the update, slice by slice."""
        device, dtype = slab.param.device, slab.param.dtype
        # the bias corrections 1 / (1 - beta^t) cancel catastrophically in float32
        t = slab.steps.double()
        betas = torch.tensor(BETAS, dtype=torch.float64).view(3, 1)
        rms_g, rms_p = rms[0].double(), rms[1].double()
        lr = torch.tensor([as_float(g["lr"]) for g in slab.groups], dtype=torch.float64)
        table = torch.stack(
            [
                1.0 / (rms_g + 1e-30),
                1.0 / (rms_p + 1e-8),
                *(1.0 / (1.0 - betas[b] ** t) for b in range(3)),
                1.0 / (1.0 - BETA2**t),
                -lr * scale.double().exp(),
                mu.double(),
            ],
            dim=1,
        ).to(device, dtype)
        eps = torch.tensor([g["eps"] for g in slab.groups], dtype=torch.float64).to(device, dtype)
        w1, b1, w2, b2 = (w.to(device, dtype) for w in self.net.coord.layers(float(t.max())))
        weights = (1.0 - betas).to(device, dtype)
        for start in range(0, slab.param.numel(), CHUNK):
            end = min(start + CHUNK, slab.param.numel())
            seg = slab.segment[start:end]
            _coordinate_update(
                slab.grad[start:end],
                slab.param[start:end],
                slab.moments[:, start:end],
                table.index_select(0, seg),
                eps.index_select(0, seg),
                (w1, b1, w2, b2),
                weights,
                slab.update[start:end],
            )


def tensor_rms(slab: _Slab) -> Tensor:
    """``[4, K]``: the rms of each tensor's gradient, parameter, ``m^(0.9)`` and ``m^(0.99)``.

    One multi-tensor norm over the ``4K`` slices (the momenta are the previous step's), as
    float32 on the CPU.
    """
    flats = (slab.grad, slab.param, slab.moments[1], slab.moments[2])
    slices = [piece for flat in flats for piece in flat.split(slab.sizes)]
    norms = torch.stack(torch._foreach_norm(slices)).float().cpu().view(4, -1)
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
    p: Tensor,
    moments: Tensor,
    table: Tensor,
    eps: Tensor,
    layers: tuple[Tensor, Tensor, Tensor, Tensor],
    weights: Tensor,
    out: Tensor,
) -> None:
    """The update of one slice of coordinates (the equations of the module docstring)."""
    moments[:3].lerp_(g.expand(3, -1), weights)
    moments[3].mul_(BETA2).addcmul_(g, g, value=1.0 - BETA2)
    sigma = (moments[3] * table[:, _C_SQ]).sqrt_().add_(eps)
    x = torch.empty(6, g.numel(), device=g.device, dtype=g.dtype)
    torch.mul(g, table[:, _INV_RMS_G], out=x[0])
    torch.mul(p, table[:, _INV_RMS_P], out=x[1])
    torch.mul(moments[:3], table[:, _C_FAST : _C_SLOW + 1].t(), out=x[2:5])
    x[2:5].div_(sigma)
    torch.div(g, sigma, out=x[5])
    w1, b1, w2, b2 = layers
    out2 = torch.addmm(b2, torch.relu_(torch.addmm(b1, x.t(), w1)), w2).tanh_()
    direction = torch.lerp(x[3], x[4], table[:, _MU]).add_(out2[:, 0])
    torch.mul(direction, out2[:, 1].exp_(), out=out)
    out.mul_(table[:, _STEP])
