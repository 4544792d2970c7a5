"""The two networks of the learned optimizer: per coordinate, and over the parameter graph.

:class:`CoordinateMLP` reads ``F = 6`` features of every coordinate (scalar of a parameter
tensor) and outputs a direction correction ``d`` and a log-magnitude ``r``, in the style of the
small MLP learned optimizers of Metz et al. (2022, "Practical tradeoffs between memory, compute,
and performance in learned optimizers", arXiv:2203.11860). The three time features
``tanh(t / tau)`` are the same for every coordinate, so they enter through the first layer's
bias and cost nothing per coordinate.

:class:`GraphStage` reads ``NODE_FEATURES = 9`` statistics of each parameter tensor, passes
messages along the parameter graph (:mod:`torchopt_edu.learned.graph`) with
:class:`ParamGraphConv`, a PyTorch Geometric ``MessagePassing`` layer, and outputs per tensor
a log step-size scale ``s_k`` and a momentum mix ``mu_k`` (how much the slow momentum replaces
the fast one), as the tensor-level network of Wichrowska et al. (2017, "Learned optimizers that
scale and generalize", arXiv:1703.04813) modulates its coordinate-level one.

Both output layers start at zero: an untrained :class:`LearnedNet` is exactly Adam (see
:class:`~torchopt_edu.learned.optimizer.LearnedOptimizer`), and meta-training learns the
corrections.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from torchopt_edu.optim._checks import check_flag, check_int

#: Momentum decay rates (fast, medium, slow) and the second moment's decay rate.
BETAS = (0.5, 0.9, 0.99)
BETA2 = 0.999
#: Time scales of the step features ``tanh(t / tau)``.
TIMESCALES = (10.0, 100.0, 1000.0)
COORD_FEATURES = 6
NODE_FEATURES = 6 + len(TIMESCALES)


def time_features(step: float, device: torch.device | None = None) -> Tensor:
    """``[tanh(t / tau) for tau in TIMESCALES]`` as a tensor of shape ``[3]``."""
    return torch.tanh(torch.tensor([step / tau for tau in TIMESCALES], device=device))


class CoordinateMLP(nn.Module):
    """``[d, r] = W2 relu(W1 x + b1 + W_t time(t)) + b2`` for every coordinate ``x`` (a row).

    Shapes: ``x [C, COORD_FEATURES]`` -> ``[C, 2]``. ``hidden`` is the width (default 8: the
    step's cost grows with it, see ``python -m torchopt_edu.learned.bench``).
    """

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.inp = nn.Linear(COORD_FEATURES, hidden)
        self.time = nn.Linear(len(TIMESCALES), hidden, bias=False)
        self.out = nn.Linear(hidden, 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def layers(self, step: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(W1^T, b1 + W_t time(t), W2^T, b2)``: the matrices the batched step multiplies."""
        bias = self.inp.bias + self.time(time_features(step, self.inp.bias.device))
        return self.inp.weight.t(), bias, self.out.weight.t(), self.out.bias

    def forward(self, x: Tensor, step: float) -> Tensor:
        """Outputs ``[C, 2]`` (direction, log-magnitude) for features ``x [C, F]`` at ``step``."""
        w1, b1, w2, b2 = self.layers(step)
        return torch.addmm(b2, torch.relu(torch.addmm(b1, x, w1)), w2)


class ParamGraphConv(MessagePassing):
    r"""One round of messages between parameter tensors, residual:

    .. math::
        m_{j \to i} = \mathrm{relu}(W_m [h_i, h_j, e_{ji}] + b_m), \qquad
        h_i' = h_i + W_u \,\mathrm{mean}_{j \in N(i)} m_{j \to i}

    where ``e_{ji}`` is the one-hot edge type (weight-bias, forward, backward). A node without
    neighbours keeps its state. Shapes: ``h [K, H]``, ``edge_index [2, E]``, ``edge_attr [E, 3]``.
    """

    def __init__(self, channels: int, edge_types: int = 3) -> None:
        super().__init__(aggr="mean")
        self.message_net = nn.Linear(2 * channels + edge_types, channels)
        self.update_net = nn.Linear(channels, channels)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """New node states ``[K, H]``."""
        return h + self.update_net(self.propagate(edge_index, h=h, edge_attr=edge_attr))

    def message(self, h_i: Tensor, h_j: Tensor, edge_attr: Tensor) -> Tensor:
        """``relu(W_m [h_i, h_j, e_ji] + b_m)`` for every edge."""
        return torch.relu(self.message_net(torch.cat([h_i, h_j, edge_attr], dim=-1)))


class GraphStage(nn.Module):
    """Per-tensor modulation from the tensors' statistics and the parameter graph.

    ``h = relu(W_in z)``, two :class:`ParamGraphConv` rounds, then ``[o_s, o_mu] = W_out h``;
    the outputs are bounded: ``s_k = 2 tanh(o_s / 2)`` (a step scale ``exp(s_k)`` in about
    ``[0.14, 7.4]``) and ``mu_k = tanh(o_mu)``.
    Shapes: ``z [K, NODE_FEATURES]`` -> ``[K]``, ``[K]``.
    """

    def __init__(self, hidden: int = 16, rounds: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(NODE_FEATURES, hidden)
        self.convs = nn.ModuleList(ParamGraphConv(hidden) for _ in range(rounds))
        self.out = nn.Linear(hidden, 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        """``(s, mu)``: log step scale and momentum mix of every tensor."""
        h = torch.relu(self.inp(z))
        for conv in self.convs:
            h = conv(h, edge_index, edge_attr)
        o = self.out(h)
        return 2.0 * torch.tanh(o[:, 0] / 2.0), torch.tanh(o[:, 1])


class LearnedNet(nn.Module):
    """The learned optimizer's weights: a :class:`CoordinateMLP` and a :class:`GraphStage`.

    ``use_graph=False`` drops the graph stage (the ablation): every tensor then has ``s_k = 0``
    and ``mu_k = 0``. Its parameters, flattened in ``parameters()`` order, are what
    meta-training searches over.
    """

    def __init__(self, hidden: int = 8, graph_hidden: int = 16, use_graph: bool = True) -> None:
        super().__init__()
        check_int("hidden", hidden, minimum=1)
        check_int("graph_hidden", graph_hidden, minimum=1)
        use_graph = check_flag("use_graph", use_graph)
        self.coord = CoordinateMLP(hidden)
        self.graph = GraphStage(graph_hidden) if use_graph else None

    @property
    def use_graph(self) -> bool:
        """Whether this net has a graph stage."""
        return self.graph is not None

    def config(self) -> dict[str, int | bool]:
        """The constructor arguments that rebuild this net's shape."""
        return {
            "hidden": self.coord.inp.out_features,
            "graph_hidden": self.graph.inp.out_features if self.graph is not None else 16,
            "use_graph": self.use_graph,
        }
