"""Full-batch node-level training with any ``torch.optim.Optimizer``.

One epoch is one optimizer step on the whole graph: the model maps every node,
``out = f(X, A) [N, C]``, and the loss is taken over the training nodes only,

    L = (1 / |train|) sum_{i in train} l(out_i, y_i),

with ``l`` the cross-entropy ``-log softmax(out_i)_{y_i}`` for classification and the
squared error ``||out_i - y_i||^2 / C`` for regression. Validation and test nodes take part
in message passing but not in the loss (the transductive setting of Kipf & Welling, 2017).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.lr_scheduler import ReduceLROnPlateau as TorchReduceLROnPlateau
from torch_geometric.data import Data
from tqdm import tqdm

from torchopt_edu.gnn.data import MASKS, infer_task, labelled_nodes, seeded, validate_graph
from torchopt_edu.lr_scheduler import ReduceLROnPlateau
from torchopt_edu.optim._checks import is_integer
from torchopt_edu.optim.schedulefree import evaluation_point, has_modes

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
# Schedulers whose step() takes the monitored metric instead of counting epochs.
METRIC_SCHEDULERS = (ReduceLROnPlateau, TorchReduceLROnPlateau)


@dataclass
class History:
    """The record of one :func:`train_node_model` run.

    Attributes:
        task: "regression" or "classification".
        loss: training loss of every epoch, as minimised (train mode, before the step).
        metrics: eval-mode metrics after every epoch's step, keyed ``"<split>_loss"`` and
            (classification) ``"<split>_acc"`` for each split with a mask.
        lr: learning rate of the first parameter group at every epoch.
        monitor: the metric that early stopping and best-state restore follow
            (``"val_loss"`` when the graph has a validation mask, else ``"train_loss"``).
        best_epoch: epoch (0-based) with the lowest monitored value; -1 if none was finite.
        stop_reason: why training ended: ``"max_epochs"``, ``"early_stopping"`` (no
            improvement in ``patience`` epochs) or ``"non_finite"`` (the loss or the monitored
            metric became NaN or infinite).
        final: the same metrics for the returned model (the best state if restored),
            including the test split.
        seconds: wall-clock time of the run.
    """

    task: str
    monitor: str
    loss: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    lr: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stop_reason: str = ""
    final: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        """Number of epochs run."""
        return len(self.loss)


def node_loss(out: Tensor, y: Tensor, task: str) -> Tensor:
    """Mean cross-entropy (classification) or mean squared error (regression) over nodes.

    Shapes: ``out [n, C]``; ``y [n]`` int64 labels, or ``y [n]`` / ``[n, C]`` float targets.
    """
    if task == "classification":
        return F.cross_entropy(out, y)
    return F.mse_loss(out, y.view_as(out))


def graph_inputs(data: Data) -> tuple[Tensor, ...]:
    """The model's inputs: ``(x, edge_index)``, plus ``edge_weight`` when the graph has one."""
    edge_weight = getattr(data, "edge_weight", None)
    if edge_weight is None:
        return data.x, data.edge_index
    return data.x, data.edge_index, edge_weight


def train_step(model: nn.Module, data: Data, optimizer: Optimizer, task: str) -> float:
    """One full-batch epoch: forward over all nodes, loss on the training nodes, one step.

    The loss is evaluated inside a closure, so optimizers that re-evaluate it (LBFGS) work
    too; the others call it once. Returns the loss before the step.
    """
    model.train()
    train_mask = getattr(data, "train_mask", None)
    nodes = slice(None) if train_mask is None else train_mask

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = node_loss(model(*graph_inputs(data))[nodes], data.y[nodes], task)
        loss.backward()
        return loss

    return optimizer.step(closure).detach().item()


def node_splits(data: Data) -> dict[str, Tensor | slice]:
    """The node sets to evaluate: ``{"train": mask, "val": mask, "test": mask}`` for each mask
    that selects at least one node, or ``{"train": all nodes}`` when the graph has none."""
    splits = {
        name.removesuffix("_mask"): getattr(data, name)
        for name in MASKS
        if getattr(data, name, None) is not None and getattr(data, name).any()
    }
    return splits or {"train": slice(None)}


def evaluate(model: nn.Module, data: Data, task: str) -> dict[str, float]:
    """Eval-mode loss (and accuracy) on every split of :func:`node_splits`.

    Returns ``{"train_loss": ..., "train_acc": ..., "val_loss": ..., ...}``, where the
    accuracy is ``mean_i [argmax_c out_ic = y_i]``.
    """
    out = _eval_forward(model, data)
    metrics: dict[str, float] = {}
    for split, mask in node_splits(data).items():
        metrics[f"{split}_loss"] = node_loss(out[mask], data.y[mask], task).item()
        if task == "classification":
            correct = out[mask].argmax(dim=1) == data.y[mask]
            metrics[f"{split}_acc"] = correct.float().mean().item()
    return metrics


def train_node_model(
    model: nn.Module,
    data: Data,
    optimizer: Optimizer,
    scheduler: LRScheduler | None = None,
    *,
    epochs: int,
    task: str | None = None,
    patience: int | None = None,
    restore_best: bool = True,
    progress: bool = True,
) -> History:
    """Train ``model`` on ``data`` full-batch for up to ``epochs`` epochs; return its history.

    Each epoch: one :func:`train_step`, then :func:`evaluate` on every split, then
    ``scheduler.step()`` (``scheduler.step(monitored value)`` for ours and torch's
    ``ReduceLROnPlateau``, which should then use ``mode="min"``).
    The monitored value is the validation loss, or the eval-mode training loss when the
    graph has no (or an empty) ``val_mask``. Training stops early when it has not improved for
    ``patience`` epochs, or when the loss stops being finite (a diverging learning rate);
    with ``restore_best`` the model ends in its best state either way. The optimizer's
    state is not rolled back. With a Schedule-Free optimizer every evaluation and the best
    state are taken at its averaged point ``x`` (:func:`evaluation_point`), and it ends in eval
    mode with the model at that point (call ``optimizer.train()`` to train on).

    Args:
        model: maps ``(x [N, F], edge_index [2, E][, edge_weight [E]])`` to ``[N, C]``, on
            the same device as ``data`` (see :func:`~torchopt_edu.gnn.data.to_device`).
        data: the graph, checked by :func:`~torchopt_edu.gnn.data.validate_graph`.
        optimizer: any ``torch.optim.Optimizer`` over (some of) ``model``'s parameters.
        scheduler: an LR scheduler of ``optimizer``, stepped once per epoch, or None.
        epochs: maximum number of epochs (>= 1).
        task: "classification" or "regression"; None infers it from ``data.y``'s dtype.
        patience: epochs without improvement before stopping; None never stops early.
        restore_best: load the parameters of the best epoch at the end.
        progress: show a tqdm progress bar.

    Raises:
        TypeError / ValueError: naming the bad argument, before anything is changed.
    """
    task = infer_task(data) if task is None else task
    validate_graph(data, task)
    _check_training_setup(model, data, optimizer, scheduler, epochs, patience, task)
    monitor = "val_loss" if "val" in node_splits(data) else "train_loss"
    history = History(task=task, monitor=monitor)
    best_value, best_state = math.inf, _snapshot(model) if restore_best else {}
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc=type(optimizer).__name__, disable=not progress, leave=False)
    for epoch in bar:
        history.lr.append(float(optimizer.param_groups[0]["lr"]))
        loss = train_step(model, data, optimizer, task)
        with evaluation_point(optimizer):  # Schedule-Free: measure and keep the average x
            metrics = evaluate(model, data, task)
            value = metrics[monitor]
            improved = value < best_value
            if improved and restore_best and math.isfinite(value) and math.isfinite(loss):
                best_state = _snapshot(model)
        history.loss.append(loss)
        for name, metric in metrics.items():
            history.metrics.setdefault(name, []).append(metric)
        if not (math.isfinite(loss) and math.isfinite(value)):
            history.stop_reason = "non_finite"
            break
        if improved:
            best_value, history.best_epoch = value, epoch
        elif patience is not None and epoch - history.best_epoch >= patience:
            history.stop_reason = "early_stopping"
            break
        if isinstance(scheduler, METRIC_SCHEDULERS):
            scheduler.step(value)
        elif scheduler is not None:
            scheduler.step()
        bar.set_postfix(loss=f"{loss:.4g}", **{monitor: f"{value:.4g}"}, refresh=False)
    else:
        history.stop_reason = "max_epochs"
    bar.close()
    if has_modes(optimizer):
        optimizer.eval()  # the model ends at the averaged point, as evaluated
    if restore_best:
        model.load_state_dict(best_state)
    history.final = evaluate(model, data, task)
    history.seconds = time.perf_counter() - start
    return history


def compare_optimizers(
    model: nn.Module,
    data: Data,
    optimizers: Mapping[str, OptimizerFactory],
    *,
    epochs: int,
    seed: int = 0,
    **train_kwargs: object,
) -> dict[str, History]:
    """Train a copy of ``model`` with each optimizer from the same initial parameters.

    Every run starts from ``copy.deepcopy(model)`` with torch's generators seeded by
    ``seed`` (same dropout masks), so the histories differ only by the optimizer.
    ``model`` itself is left untouched.

    Args:
        model: the initial model, on ``data``'s device.
        data: the graph.
        optimizers: name -> factory ``params -> Optimizer``, e.g.
            ``{"adam": lambda p: Adam(p, lr=0.01)}``.
        epochs: maximum epochs of each run.
        seed: seed of each run's random stream.
        **train_kwargs: passed on to :func:`train_node_model` (task, patience, ...).

    Returns:
        name -> :class:`History`, in the order of ``optimizers``.
    """
    histories = {}
    for name, make_optimizer in optimizers.items():
        run_model = copy.deepcopy(model)
        with seeded(seed):
            histories[name] = train_node_model(
                run_model,
                data,
                make_optimizer(run_model.parameters()),
                epochs=epochs,
                **train_kwargs,
            )
    return histories


def format_table(histories: Mapping[str, History]) -> str:
    """A plain-text table: one row per run with its final metrics, best epoch and time."""
    metric_names = list(dict.fromkeys(name for h in histories.values() for name in h.final))
    header = ["optimizer", "epochs", "best", "stop", *metric_names, "seconds"]
    rows = [
        [
            name,
            str(h.epochs),
            str(h.best_epoch),
            h.stop_reason,
            *(f"{h.final[m]:.4f}" if m in h.final else "-" for m in metric_names),
            f"{h.seconds:.2f}",
        ]
        for name, h in histories.items()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    table = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in table
    )


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the model's state (parameters and buffers)."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _check_training_setup(
    model: nn.Module,
    data: Data,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    epochs: int,
    patience: int | None,
    task: str,
) -> None:
    """Reject arguments that would fail mid-training or silently train nothing."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if scheduler is not None and getattr(scheduler, "optimizer", None) is not optimizer:
        raise ValueError("scheduler must be built on the optimizer passed to train_node_model")
    if not is_integer(epochs) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if patience is not None and (not is_integer(patience) or patience < 1):
        raise ValueError(f"patience must be None or an int >= 1, got {patience!r}")
    model_params = {id(p) for p in model.parameters()}
    optimizer_params = [p for group in optimizer.param_groups for p in group["params"]]
    if not optimizer_params or any(id(p) not in model_params for p in optimizer_params):
        raise ValueError(
            "optimizer must hold parameters of this model (was it built on "
            "another copy, e.g. before copy.deepcopy(model)?)"
        )
    devices = {p.device for p in model.parameters()}
    if devices != {data.x.device}:
        raise ValueError(
            f"model parameters are on {sorted(map(str, devices))} but data.x is "
            f"on {data.x.device}; move both with to_device(model, data, device)"
        )
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes and data.x.dtype not in dtypes:
        raise ValueError(
            f"model parameters are {', '.join(sorted(map(str, dtypes)))} but data.x "
            f"is {data.x.dtype}; convert one to the other, e.g. "
            f"model.to(data.x.dtype)"
        )
    try:
        out = _eval_forward(model, data)
    except (RuntimeError, IndexError, TypeError) as error:  # torch's, from inside the model
        weight = ", edge_weight" if getattr(data, "edge_weight", None) is not None else ""
        raise ValueError(
            f"model(x, edge_index{weight}) failed on this graph (x of shape "
            f"{list(data.x.shape)}): {error}; does the model take "
            f"{data.x.size(1)} input features?"
        ) from error
    _check_model_output(out, data, task)


def _check_model_output(out: object, data: Data, task: str) -> None:
    """Raise ``ValueError`` unless ``out`` (the model's eval-mode output) fits ``data``: a tensor
    ``[N, C]``, at least 2 classes and one per label, or one value per regression target."""
    num_nodes = data.num_nodes
    if not isinstance(out, Tensor):
        raise ValueError(
            f"model(x, edge_index) must return a tensor [{num_nodes}, C], got {type(out).__name__}"
        )
    if out.dim() != 2 or out.size(0) != num_nodes:
        raise ValueError(f"model output must have shape [{num_nodes}, C], got {list(out.shape)}")
    if task == "classification":
        if out.size(1) < 2:
            raise ValueError(
                f"a classifier needs at least 2 class scores, the model outputs {out.size(1)} "
                "(every node would be class 0: accuracy 1 and nothing learnt)"
            )
        max_label = int(data.y[labelled_nodes(data)].max())  # other nodes' labels are unread
        if out.size(1) <= max_label:
            raise ValueError(
                f"model outputs {out.size(1)} class scores but data.y has labels up to {max_label}"
            )
    if task == "regression" and out.numel() != data.y.numel():
        raise ValueError(
            f"model output of shape {list(out.shape)} does not match data.y of "
            f"shape {list(data.y.shape)}"
        )


@torch.no_grad()
def _eval_forward(model: nn.Module, data: Data) -> Tensor:
    """One eval-mode forward pass that leaves the model's mode as it was."""
    was_training = model.training
    model.eval()
    try:
        return model(*graph_inputs(data))
    finally:
        model.train(was_training)
