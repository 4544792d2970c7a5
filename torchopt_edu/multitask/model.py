"""A shared-trunk multi-task network: one trunk, one named head per task.

This is the source document's Keras model in PyTorch::

    x -> trunk (Linear(in, 64) + ReLU) -> z -> head "classification": Linear(64, 3)  (softmax CE)
                                            -> head "regression":     Linear(64, 1)  (MSE)

Heads output logits, not probabilities: ``F.cross_entropy`` applies the log-softmax itself,
which is the numerically stable form of the document's softmax + sparse categorical
cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TaskKind = Literal["classification", "regression"]


@dataclass(frozen=True)
class Task:
    """One task of a multi-task model: a name, a kind and a head width.

    ``kind="classification"``: the head outputs ``out_features`` logits (classes) and the loss
    is softmax cross-entropy ``-log softmax(o)_y`` averaged over the batch; targets are class
    indices ``[N]``. ``kind="regression"``: the loss is the mean squared error
    ``mean((o - y)^2)``; with ``out_features=1`` the head output is squeezed to ``[N]`` so it
    matches a target of shape ``[N]``.
    """

    name: str
    kind: TaskKind
    out_features: int = 1

    def __post_init__(self) -> None:
        if not self.name or "." in self.name:
            raise ValueError(f"task name must be non-empty and contain no '.', got {self.name!r}")
        if self.kind not in ("classification", "regression"):
            raise ValueError(
                f"task kind must be 'classification' or 'regression', got {self.kind!r}"
            )
        minimum = 2 if self.kind == "classification" else 1
        if not isinstance(self.out_features, int) or self.out_features < minimum:
            raise ValueError(
                f"task {self.name!r}: out_features must be an int >= {minimum} for "
                f"{self.kind}, got {self.out_features!r}"
            )

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The task's loss, batch-averaged: cross-entropy or mean squared error.

        A regression output and target of different shapes raise ``ValueError`` instead of
        broadcasting: ``mse_loss`` of ``[N, 1]`` against ``[N]`` would silently compare every
        prediction with every target. Classification targets must be integer class indices
        ``[N]`` in ``[0, C)``: cross-entropy would read float ``[N, C]`` targets as
        probabilities and silently drop a row labelled -100.
        """
        if self.kind == "classification":
            if target.dtype not in (torch.int64, torch.int32) or target.shape != output.shape[:1]:
                raise ValueError(
                    f"task {self.name!r}: classification targets must be integer class indices "
                    f"of shape {tuple(output.shape[:1])}, got {target.dtype} of shape "
                    f"{tuple(target.shape)}"
                )
            classes = output.shape[-1]
            outside = (target < 0) | (target >= classes)
            if bool(outside.any()):
                raise ValueError(
                    f"task {self.name!r}: target {int(target[outside][0])} is not a class "
                    f"index in [0, {classes})"
                )
            return F.cross_entropy(output, target.long())
        if output.shape != target.shape:
            raise ValueError(
                f"task {self.name!r}: output shape {tuple(output.shape)} and target shape "
                f"{tuple(target.shape)} differ"
            )
        return F.mse_loss(output, target)


class MultiTaskModel(nn.Module):
    """A trunk shared by all tasks and one head per task.

    ``forward(x)`` returns ``{task name: head output}``; ``trunk(x)`` gives the shared
    representation ``z`` and ``head_outputs(z)`` the heads' outputs on it, the split that
    MGDA-UB (``wrt="representation"``) needs.
    """

    def __init__(
        self, trunk: nn.Module, tasks: Sequence[Task], heads: Mapping[str, nn.Module]
    ) -> None:
        super().__init__()
        names = [task.name for task in tasks]
        if len(tasks) < 2 or len(set(names)) != len(names):
            raise ValueError(f"need at least 2 tasks with distinct names, got {names}")
        if sorted(heads) != sorted(names):
            raise ValueError(f"heads {sorted(heads)} do not match tasks {sorted(names)}")
        self.tasks = tuple(tasks)
        self.trunk = trunk
        self.heads = nn.ModuleDict({name: heads[name] for name in names})

    def head_outputs(self, representation: Tensor) -> dict[str, Tensor]:
        """Every head applied to the shared representation ``z``."""
        outputs = {}
        for task in self.tasks:
            output = self.heads[task.name](representation)
            if task.kind == "regression" and task.out_features == 1:
                output = output.squeeze(-1)
            outputs[task.name] = output
        return outputs

    def forward(self, inputs: Tensor) -> dict[str, Tensor]:
        """``{name: head(trunk(x))}`` for every task."""
        return self.head_outputs(self.trunk(inputs))

    def losses(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """``{name: task.loss(outputs[name], targets[name])}``, in task order."""
        missing = [task.name for task in self.tasks if task.name not in targets]
        if missing:
            raise ValueError(f"targets lack tasks {missing}; got {sorted(targets)}")
        return {task.name: task.loss(outputs[task.name], targets[task.name]) for task in self.tasks}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trunk's parameters: those every task's gradient reaches."""
        return list(self.trunk.parameters())

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the trunk's last module that has any: the layer GradNorm watches."""
        with_parameters = [m for m in self.trunk.modules() if list(m.parameters(recurse=False))]
        if not with_parameters:
            raise ValueError("the trunk has no parameters")
        return list(with_parameters[-1].parameters(recurse=False))


def shared_trunk_model(
    in_features: int,
    tasks: Sequence[Task],
    hidden: Sequence[int] = (64,),
    activation: Callable[[], nn.Module] = nn.ReLU,
) -> MultiTaskModel:
    """Build ``trunk = [Linear(in, h_1), act, ..., Linear(h_{k-1}, h_k), act]`` and linear heads.

    The defaults give the document's shared ``Dense(64, activation='relu')``. Each task gets
    ``Linear(h_k, task.out_features)``.
    """
    widths = [in_features, *hidden]
    if not hidden or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(
            f"in_features and hidden widths must be ints >= 1 with at least one hidden layer, "
            f"got in_features={in_features!r}, hidden={tuple(hidden)!r}"
        )
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(width_in, width_out), activation()]
    heads = {task.name: nn.Linear(widths[-1], task.out_features) for task in tasks}
    return MultiTaskModel(nn.Sequential(*layers), tasks, heads)
