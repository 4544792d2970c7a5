"""Graph neural networks trained with any optimizer: GCN models, graphs, a training loop.

The source document's "GNN-based optimisation" example, a ``GCNConv(10, 64) ->
GCNConv(64, 1)`` regression on a random graph trained with Adam, as a module::

    from torchopt_edu.gnn import GCN, random_regression_graph, train_node_model
    from torchopt_edu.optim import Adam

    data = random_regression_graph(num_nodes=10, num_edges=20, num_features=10)
    model = GCN(10, [64], 1)
    history = train_node_model(model, data, Adam(model.parameters(), lr=0.01), epochs=100)
"""

from torchopt_edu.gnn.data import (
    infer_task,
    karate_club,
    random_regression_graph,
    resolve_device,
    sbm_graph,
    seeded,
    to_device,
    validate_graph,
)
from torchopt_edu.gnn.model import GCN, count_parameters
from torchopt_edu.gnn.train import (
    History,
    compare_optimizers,
    evaluate,
    format_table,
    train_node_model,
    train_step,
)

__all__ = [
    "GCN",
    "History",
    "compare_optimizers",
    "count_parameters",
    "evaluate",
    "format_table",
    "infer_task",
    "karate_club",
    "random_regression_graph",
    "resolve_device",
    "sbm_graph",
    "seeded",
    "to_device",
    "train_node_model",
    "train_step",
    "validate_graph",
]
