"""The built-in workloads: six small problems whose data ships with a package (no download).

====================  ===============================================  =========================
name                  data and model                                   target
====================  ===============================================  =========================
``digits_mlp``        scikit-learn digits, 64-32-10 MLP                validation accuracy
``digits_cnn``        the same 8x8 images, two 3x3 conv layers         validation accuracy
``sbm_gcn``           stochastic block model graph, 2-layer GCN        validation accuracy
``char_lm``           Python's own help text (``pydoc_data``), LSTM    validation cross-entropy
``diabetes``          scikit-learn diabetes regression, 10-32-1 MLP    validation R^2
``digits_multitask``  digits: class + ink, shared trunk, two heads     validation total loss
====================  ===============================================  =========================

Each target was set so that a well-tuned Adam reaches it in roughly a third to a half of the step
budget: far enough to separate optimizers, near enough that several of them get there. The data
splits are fixed (seed 0); a trial's seed draws the initial weights and the batches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchopt_edu.benchmark.workload import Workload

Rows = tuple[Tensor, ...]


@torch.no_grad()
def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return (logits.argmax(dim=1) == labels).double().mean().item()


def _digits_splits() -> tuple[Rows, Rows]:
    from torchopt_edu.tuning.tasks import load_digits_splits

    train, valid, _test = load_digits_splits(seed=0)
    return train, valid


class DigitsMLP(Workload):
    """scikit-learn's 8x8 digits (60% train, 20% valid) with a 64-32-10 ReLU network."""

    name = "digits_mlp"
    metric = "validation accuracy"
    target = 0.95
    max_steps = 600
    eval_every = 20
    batch_size = 32

    def load_data(self) -> tuple[Rows, Rows]:
        """The digits' train and validation splits."""
        return _digits_splits()

    def make_model(self) -> nn.Module:
        """``Linear(64, 32) -> ReLU -> Linear(32, 10)``."""
        from torchopt_edu.tuning.tasks import digits_mlp

        return digits_mlp(32)

    def loss(self, model: nn.Module, batch: Rows) -> Tensor:
        """Cross-entropy of the logits."""
        inputs, labels = batch
        return F.cross_entropy(model(inputs), labels)

    def validate(self, model: nn.Module, valid: Rows) -> float:
        """Fraction of validation images classified right."""
        inputs, labels = valid
        return _accuracy(model(inputs), labels)


class DigitsCNN(DigitsMLP):
    """The digits as 1x8x8 images: conv(8) -> pool -> conv(16) -> pool -> linear(10)."""

    name = "digits_cnn"
    target = 0.96

    def make_model(self) -> nn.Module:
        """Two 3x3 conv layers with ReLU and 2x2 max-pooling (8x8 -> 4x4 -> 2x2), then linear."""
        return nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 2 * 2, 10),
        )


class SBMGCN(Workload):
    """Node classification on a 3-block stochastic block model (180 nodes) with a 2-layer GCN.

    Transductive and full-batch: every step sees the whole graph and the 30 labelled nodes; the
    metric is the accuracy on 60 validation nodes.
    """

    name = "sbm_gcn"
    metric = "validation accuracy"
    target = 0.95
    max_steps = 200
    eval_every = 1

    def load_data(self) -> tuple[Any, Any]:
        """The graph, twice: training and validation differ only by the node mask used."""
        from torchopt_edu.gnn import sbm_graph

        graph = sbm_graph(num_val=60, seed=0)
        return graph, graph

    def make_model(self) -> nn.Module:
        """``GCN(8, [16], 3)`` with a cached normalised adjacency (the graph never changes)."""
        from torchopt_edu.gnn import GCN

        return GCN(8, [16], 3, cached=True)

    def sample_batch(self, train: Any, generator: torch.Generator) -> Any:
        """The whole graph (full-batch training)."""
        return train

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        """Cross-entropy on the training nodes."""
        logits = model(batch.x, batch.edge_index)
        return F.cross_entropy(logits[batch.train_mask], batch.y[batch.train_mask])

    def validate(self, model: nn.Module, valid: Any) -> float:
        """Accuracy on the validation nodes."""
        logits = model(valid.x, valid.edge_index)
        return _accuracy(logits[valid.val_mask], valid.y[valid.val_mask])


class CharLM(Workload):
    """Next-character prediction on Python's help text (``pydoc_data.topics``, ships with Python).

    The topics are joined in sorted order; the first 90% of the characters train, the last 10%
    validate. Characters outside printable ASCII map to one "other" symbol (96 symbols in all).
    The model is an embedding (32), a one-layer LSTM (64) and a linear read-out; a step is 32
    random windows of 32 characters. The metric is the mean cross-entropy in nats per character
    over fixed validation windows (the best unigram model scores 3.26).
    """

    name = "char_lm"
    metric = "validation nats/char"
    target = 1.95
    higher_is_better = False
    max_steps = 400
    eval_every = 25
    batch_size = 32
    window = 32
    """Characters per training window (the model predicts characters 2..window+1 from 1..window)."""
    characters = 100_000
    """How many characters of the help text the workload uses."""

    vocabulary = 96  # printable ASCII 32..126, and one symbol for everything else

    def load_data(self) -> tuple[Tensor, Tensor]:
        """The character codes of the training and validation text (int64 tensors)."""
        from pydoc_data.topics import topics

        text = "".join(topics[key] for key in sorted(topics))[: self.characters]
        codes = torch.tensor([ord(char) - 32 for char in text], dtype=torch.long)
        codes[(codes < 0) | (codes > 94)] = 95
        split = int(0.9 * len(codes))
        return codes[:split], codes[split:]

    def make_model(self) -> nn.Module:
        """Embedding(96, 32) -> LSTM(32, 64) -> Linear(64, 96)."""
        return _CharLSTM(self.vocabulary, 32, 64)

    def sample_batch(self, train: Tensor, generator: torch.Generator) -> Tensor:
        """``batch_size`` windows of ``window + 1`` characters starting at random offsets."""
        starts = torch.randint(
            len(train) - self.window - 1, (self.batch_size,), generator=generator
        )
        return train[starts[:, None] + torch.arange(self.window + 1)]

    def loss(self, model: nn.Module, batch: Tensor) -> Tensor:
        """Cross-entropy of each next character given the ones before it in the window."""
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, self.vocabulary), batch[:, 1:].reshape(-1))

    def validate(self, model: nn.Module, valid: Tensor) -> float:
        """Mean next-character cross-entropy over the validation text cut into windows."""
        usable = (len(valid) - 1) // self.window * self.window
        inputs = valid[:usable].view(-1, self.window)
        targets = valid[1 : usable + 1].view(-1, self.window)
        logits = model(inputs)
        return F.cross_entropy(logits.reshape(-1, self.vocabulary), targets.reshape(-1)).item()


class _CharLSTM(nn.Module):
    """Embedding -> LSTM -> Linear: logits ``[B, T, V]`` for character codes ``[B, T]``."""

    def __init__(self, vocabulary: int, embedding: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, embedding)
        self.lstm = nn.LSTM(embedding, hidden, batch_first=True)
        self.read_out = nn.Linear(hidden, vocabulary)

    def forward(self, codes: Tensor) -> Tensor:
        """Logits of the next character at every position."""
        states, _ = self.lstm(self.embed(codes))
        return self.read_out(states)


class Diabetes(Workload):
    """scikit-learn's diabetes regression (442 patients, 10 features) with a 10-32-1 MLP.

    The target (disease progression after a year) is standardised with the training split's mean
    and deviation; 80% train, 20% validate. The metric is the validation R^2 = 1 - MSE / Var(y)
    (a linear least-squares fit scores about 0.45 here).
    """

    name = "diabetes"
    metric = "validation R^2"
    target = 0.58
    max_steps = 300
    eval_every = 5
    batch_size = 32

    def load_data(self) -> tuple[Rows, Rows]:
        """Standardised features and targets, split 80/20 by a permutation seeded with 0."""
        from sklearn.datasets import load_diabetes

        features, progression = load_diabetes(return_X_y=True)
        inputs = torch.tensor(features, dtype=torch.float32)
        targets = torch.tensor(progression, dtype=torch.float32)
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))
        train, valid = order[: int(0.8 * len(order))], order[int(0.8 * len(order)) :]
        mean, std = inputs[train].mean(0), inputs[train].std(0)
        inputs = (inputs - mean) / std
        targets = (targets - targets[train].mean()) / targets[train].std()
        return (inputs[train], targets[train]), (inputs[valid], targets[valid])

    def make_model(self) -> nn.Module:
        """``Linear(10, 32) -> ReLU -> Linear(32, 1)``."""
        return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1), nn.Flatten(0))

    def loss(self, model: nn.Module, batch: Rows) -> Tensor:
        """Mean squared error."""
        inputs, targets = batch
        return F.mse_loss(model(inputs), targets)

    def validate(self, model: nn.Module, valid: Rows) -> float:
        """``R^2 = 1 - mean((f(x) - y)^2) / var(y)`` on the validation split."""
        inputs, targets = valid
        residual = F.mse_loss(model(inputs), targets)
        return (1 - residual / targets.var(unbiased=False)).item()


class DigitsMultiTask(Workload):
    """The multi-task digits: each image's class and its ink (mean intensity), one shared trunk.

    The model is :func:`~torchopt_edu.multitask.shared_trunk_model` (64 -> 64, a 10-class head and
    a regression head); the loss is the plain sum ``CE + MSE`` and so is the metric, on the 25%
    validation split of :func:`~torchopt_edu.multitask.load_digits_tasks`.
    """

    name = "digits_multitask"
    metric = "validation CE + MSE"
    target = 0.25
    higher_is_better = False
    max_steps = 600
    eval_every = 20
    batch_size = 32

    def load_data(self) -> tuple[Any, Any]:
        """:func:`~torchopt_edu.multitask.load_digits_tasks` ``(0.25, seed=0)``."""
        from torchopt_edu.multitask import load_digits_tasks

        return load_digits_tasks(0.25, seed=0)

    def make_model(self) -> nn.Module:
        """A 64-64 ReLU trunk with heads ``digit`` (10 logits) and ``ink`` (one value)."""
        from torchopt_edu.multitask import DIGITS_TASKS, shared_trunk_model

        return shared_trunk_model(64, DIGITS_TASKS, hidden=(64,))

    def sample_batch(self, train: Any, generator: torch.Generator) -> Any:
        """``batch_size`` random rows of the inputs and of both targets."""
        return train.subset(torch.randint(len(train), (self.batch_size,), generator=generator))

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        """Sum of the two task losses."""
        return sum(model.losses(model(batch.inputs), batch.targets).values())

    def validate(self, model: nn.Module, valid: Any) -> float:
        """Sum of the two task losses on the validation split."""
        return self.loss(model, valid).item()


WORKLOADS: dict[str, type[Workload]] = {
    cls.name: cls for cls in (DigitsMLP, DigitsCNN, SBMGCN, CharLM, Diabetes, DigitsMultiTask)
}
"""The built-in workloads by name."""


def get_workload(workload: str | Workload) -> Workload:
    """A workload instance from its name in :data:`WORKLOADS` (or the instance itself).

    Raises:
        ValueError: an unknown name, listing the known ones.
        TypeError: neither a name nor a :class:`Workload`.
    """
    if isinstance(workload, Workload):
        return workload
    if not isinstance(workload, str):
        raise TypeError(f"a workload must be a name or a Workload, got {workload!r}")
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}: choose from {', '.join(WORKLOADS)}")
    return WORKLOADS[workload]()
