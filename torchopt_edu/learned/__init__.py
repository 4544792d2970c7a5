"""A learned optimizer that passes messages over the model's parameter graph.

The source document's "GNN-based optimisation" claims that an optimizer whose strategy is
updated through the relations between graph nodes representing parameters converges faster
and more robustly. This package builds that optimizer and measures the claim:

- :class:`LearnedOptimizer`: a ``torch.optim.Optimizer`` whose update is a small per-coordinate
  network, modulated per tensor by a PyTorch Geometric message-passing network over the
  parameter graph (:mod:`~torchopt_edu.learned.graph`);
- :mod:`~torchopt_edu.learned.meta`: meta-training by antithetic evolution strategies on a
  distribution of small tasks (:mod:`~torchopt_edu.learned.tasks`);
- :mod:`~torchopt_edu.learned.evaluate`: held-out workloads against Adam, default and tuned,
  and the ablation without the graph stage.
"""

from torchopt_edu.learned.graph import ParameterGraph, chain_graph, parameter_graph
from torchopt_edu.learned.nets import CoordinateMLP, GraphStage, LearnedNet, ParamGraphConv
from torchopt_edu.learned.optimizer import LearnedOptimizer
from torchopt_edu.learned.weights import load_net, load_shipped, save_net

__all__ = [
    "CoordinateMLP",
    "GraphStage",
    "LearnedNet",
    "LearnedOptimizer",
    "ParamGraphConv",
    "ParameterGraph",
    "chain_graph",
    "load_net",
    "load_shipped",
    "parameter_graph",
    "save_net",
]
