"""Split a data set among clients: IID, Dirichlet label skew, pathological shards, quantity skew.

Every partition function returns one sorted ``int64`` index tensor per client; together they
cover each sample exactly once. The same ``seed`` always gives the same partition (NumPy's
``default_rng``). :func:`label_counts` tabulates who holds what, :func:`format_counts` prints
it and :func:`plot_counts` draws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from torchopt_edu.optim._checks import check_int, check_number, check_seed

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Partition = list[Tensor]


def _labels(labels: Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    array = labels.cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {array.dtype} {array.shape}")
    if array.size and array.min() < 0:
        raise ValueError(f"labels must be >= 0, got {array.min()}")
    return array


def _as_partition(index_lists: Sequence[np.ndarray]) -> Partition:
    return [torch.as_tensor(np.sort(indices), dtype=torch.int64) for indices in index_lists]


def _split_sizes(permutation: np.ndarray, sizes: np.ndarray) -> Partition:
    return _as_partition(np.split(permutation, np.cumsum(sizes)[:-1]))


def iid_partition(num_samples: int, num_clients: int, seed: int = 0) -> Partition:
    """Shuffle the samples and deal them out: client sizes differ by at most one.

    The reference case of McMahan et al. 2017 (Sec. 3): every client sees the global
    distribution.
    """
    num_clients = check_int("num_clients", num_clients, minimum=1)
    num_samples = check_int("num_samples", num_samples, minimum=num_clients)
    permutation = np.random.default_rng(check_seed(seed)).permutation(num_samples)
    return _as_partition(np.array_split(permutation, num_clients))


def _round_shares(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``weights`` that sum to ``total`` (largest remainders)."""
    exact = weights * total
    shares = np.floor(exact).astype(np.int64)
    shares[np.argsort(shares - exact, kind="stable")[: total - shares.sum()]] += 1
    return shares


def dirichlet_partition(
    labels: Tensor | np.ndarray | Sequence[int], num_clients: int, alpha: float, seed: int = 0
) -> Partition:
    """Label skew: client ``k`` draws its label mix ``q_k ~ Dirichlet(alpha * C * p)``.

    ``p`` is the global distribution of the ``C`` labels, so ``E[q_k] = p`` and, for balanced
    labels, ``q_k ~ Dirichlet(alpha, ..., alpha)``: ``alpha`` is the concentration per label,
    as in Flower's ``DirichletPartitioner`` and NIID-Bench (Hsu et al.'s ``alpha`` is ``C``
    times larger). ``alpha -> inf`` tends to IID; ``alpha = 0.1`` gives most clients one to
    three dominant labels.

    Every client gets ``n / K`` samples (sizes differ by at most one), ``round(q_k(c) * n / K)``
    of label ``c``, taken at random without replacement; once a label runs out, the client's
    mix is renormalised over the labels left, so the last clients lean towards what remains.

    Reference: Hsu, Qi and Brown 2019, "Measuring the Effects of Non-Identical Data Distribution
    for Federated Visual Classification", Sec. 3.
    """
    labels = _labels(labels)
    num_clients = check_int("num_clients", num_clients, minimum=1)
    check_int("number of labels", labels.size, minimum=num_clients)
    alpha = check_number("alpha", alpha, 0.0, open_low=True)
    rng = np.random.default_rng(check_seed(seed))
    classes = np.unique(labels)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    left = np.array([len(pool) for pool in pools])
    prior = left / left.sum()
    sizes = [len(chunk) for chunk in np.array_split(np.arange(labels.size), num_clients)]
    index_lists = []
    for size in sizes:
        mix = rng.dirichlet(alpha * len(classes) * prior)
        counts = np.zeros_like(left)
        while counts.sum() < size:
            available = left - counts
            weights = mix * (available > 0)
            weights = weights / weights.sum() if weights.sum() > 0 else available / available.sum()
            counts += np.minimum(_round_shares(weights, size - counts.sum()), available)
        index_lists.append(
            np.concatenate([[pools[c].pop() for _ in range(n)] for c, n in enumerate(counts)])
        )
        left -= counts
    return _as_partition(index_lists)


def shard_partition(
    labels: Tensor | np.ndarray | Sequence[int],
    num_clients: int,
    shards_per_client: int = 2,
    seed: int = 0,
) -> Partition:
    """McMahan's pathological non-IID split: sort by label, cut into equal shards, deal shards.

    The data sorted by label is cut into ``num_clients * shards_per_client`` contiguous shards
    and each client gets ``shards_per_client`` of them at random, so with 2 shards most clients
    hold two labels (a shard on a label boundary adds a third). Shard sizes differ by at most
    one: the ``n mod #shards`` samples beyond an even split go one each to the first shards
    (``np.array_split``).

    Reference: McMahan et al. 2017, Sec. 3 ("sort the data by digit label, divide it into 200
    shards of size 300, and assign each of 100 clients 2 shards").
    """
    labels = _labels(labels)
    num_clients = check_int("num_clients", num_clients, minimum=1)
    shards_per_client = check_int("shards_per_client", shards_per_client, minimum=1)
    num_shards = num_clients * shards_per_client
    check_int("number of labels", labels.size, minimum=num_shards)
    rng = np.random.default_rng(check_seed(seed))
    by_label = np.argsort(labels, kind="stable")
    shards = np.array_split(by_label, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return _as_partition([np.concatenate([shards[s] for s in row]) for row in dealt])


def quantity_skew_partition(
    num_samples: int, num_clients: int, beta: float, seed: int = 0, min_samples: int = 1
) -> Partition:
    """Quantity skew: client sizes follow ``Dirichlet(beta)`` proportions, labels stay IID.

    Each client first gets ``min_samples``; the remaining ``n - K * min_samples`` samples are
    shared out in proportions ``q ~ Dirichlet(beta * 1_K)``. Small ``beta`` gives a few large
    clients and many tiny ones; ``beta -> inf`` tends to equal sizes.

    Reference: Li, Diao, Chen and He 2022, "Federated Learning on Non-IID Data Silos: An
    Experimental Study" (ICDE), Sec. III-C.
    """
    num_clients = check_int("num_clients", num_clients, minimum=1)
    min_samples = check_int("min_samples", min_samples, minimum=1)
    num_samples = check_int("num_samples", num_samples, minimum=num_clients * min_samples)
    beta = check_number("beta", beta, 0.0, open_low=True)
    rng = np.random.default_rng(check_seed(seed))
    permutation = rng.permutation(num_samples)
    spare = num_samples - num_clients * min_samples
    shares = np.floor(rng.dirichlet(np.full(num_clients, beta)) * spare).astype(np.int64)
    shares[rng.choice(num_clients, spare - shares.sum(), replace=False)] += 1  # rounding leftovers
    return _split_sizes(permutation, shares + min_samples)


PARTITIONS = {
    "iid": iid_partition,
    "dirichlet": dirichlet_partition,
    "shards": shard_partition,
    "quantity": quantity_skew_partition,
}


def label_counts(
    partition: Partition,
    labels: Tensor | np.ndarray | Sequence[int],
    num_classes: int | None = None,
) -> np.ndarray:
    """``counts[k, c]``: how many samples of class ``c`` client ``k`` holds."""
    labels = _labels(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    return np.stack(
        [np.bincount(labels[indices.numpy()], minlength=num_classes) for indices in partition]
    )


def format_counts(counts: np.ndarray, max_rows: int = 20) -> str:
    """A text table of :func:`label_counts`: one row per client, its size and label counts.

    With more than ``max_rows`` clients only ``max_rows`` are shown: the first
    ``ceil(max_rows / 2)`` and the last ``floor(max_rows / 2)``, with ``...`` between.
    """
    max_rows = check_int("max_rows", max_rows, minimum=1)
    num_clients, num_classes = counts.shape
    header = f"{'client':>6} {'n':>5} | " + " ".join(f"{c:>4}" for c in range(num_classes))
    rows = [header, "-" * len(header)]
    shown = list(range(num_clients))
    if num_clients > max_rows:
        head, tail = (max_rows + 1) // 2, max_rows // 2
        shown = shown[:head] + [-1] + shown[num_clients - tail :]
    for k in shown:
        if k < 0:
            rows.append(f"{'...':>6}")
            continue
        cells = " ".join(f"{n:>4}" for n in counts[k])
        rows.append(f"{k:>6} {counts[k].sum():>5} | {cells}")
    return "\n".join(rows)


def plot_counts(counts: np.ndarray, ax: Axes | None = None, title: str = "") -> Any:
    """Stacked bars: one bar per client, one colour per label (needs matplotlib)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plot_counts needs matplotlib: pip install torchopt-edu[viz]") from error
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 2.5), dpi=80)
    clients = np.arange(counts.shape[0])
    bottom = np.zeros(counts.shape[0])
    colours = plt.get_cmap("tab10")
    for c in range(counts.shape[1]):
        ax.bar(clients, counts[:, c], bottom=bottom, color=colours(c % 10), width=1.0, label=str(c))
        bottom += counts[:, c]
    ax.set_xlabel("client")
    ax.set_ylabel("samples")
    ax.set_title(title)
    return ax
