"""Partitions cover every sample once, have the stated label distributions, and follow the seed."""

import math

import numpy as np
import pytest
import torch

from torchopt_edu.federated import (
    dirichlet_partition,
    format_counts,
    iid_partition,
    label_counts,
    quantity_skew_partition,
    shard_partition,
)

# 1,000 samples, 10 classes of unequal size (55..145)
LABELS = np.repeat(np.arange(10), [55, 65, 75, 85, 95, 105, 115, 125, 135, 145])
LABELS = np.random.default_rng(0).permutation(LABELS)


def _assert_covers_each_sample_once(partition, num_samples):
    merged = torch.cat(partition)
    assert merged.dtype == torch.int64
    assert sorted(merged.tolist()) == list(range(num_samples))
    for indices in partition:
        assert torch.equal(indices, indices.sort().values)


def _total_variation(counts):
    """Per client: 1/2 sum_c |q_k(c) - p(c)|, the distance of its label mix to the global one."""
    p = counts.sum(0) / counts.sum()
    q = counts / counts.sum(1, keepdims=True)
    return 0.5 * np.abs(q - p).sum(1)


def test_iid_sizes_differ_by_at_most_one_and_labels_follow_the_global_mix():
    partition = iid_partition(len(LABELS), 7, seed=1)
    _assert_covers_each_sample_once(partition, len(LABELS))
    sizes = [len(indices) for indices in partition]
    assert max(sizes) - min(sizes) <= 1
    assert _total_variation(label_counts(partition, LABELS)).max() < 0.15


def test_dirichlet_alpha_controls_label_skew():
    near_iid = label_counts(dirichlet_partition(LABELS, 10, alpha=1000.0, seed=0), LABELS)
    skewed = label_counts(dirichlet_partition(LABELS, 10, alpha=0.1, seed=0), LABELS)
    assert _total_variation(near_iid).max() < 0.1
    # alpha = 0.1: a typical client gets most of its data from one label
    assert np.median(skewed.max(1) / skewed.sum(1)) > 0.5
    assert _total_variation(skewed).mean() > 0.5


def test_dirichlet_gives_equal_sizes_and_covers_every_sample():
    for alpha in (0.05, 0.5, 5.0):
        partition = dirichlet_partition(LABELS, 13, alpha=alpha, seed=2)
        _assert_covers_each_sample_once(partition, len(LABELS))
        sizes = [len(indices) for indices in partition]
        assert max(sizes) - min(sizes) <= 1


def test_shards_are_contiguous_runs_of_the_label_sorted_data():
    num_clients, per_client = 20, 2
    partition = shard_partition(LABELS, num_clients, per_client, seed=3)
    _assert_covers_each_sample_once(partition, len(LABELS))
    order = np.argsort(LABELS, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    for indices in partition:
        ranks = np.sort(position[indices.numpy()])
        runs = 1 + int((np.diff(ranks) > 1).sum())
        assert runs <= per_client  # two shards, possibly adjacent
        assert len(indices) == len(LABELS) // (num_clients * per_client) * per_client
    counts = label_counts(partition, LABELS)
    # each shard of 25 sorted samples spans at most 2 labels
    assert ((counts > 0).sum(1) <= 2 * per_client).all()
    assert np.mean((counts > 0).sum(1)) < 3.5


def test_quantity_skew_sizes_vary_with_beta_and_respect_min_samples():
    skewed = quantity_skew_partition(len(LABELS), 10, beta=0.3, seed=4, min_samples=5)
    _assert_covers_each_sample_once(skewed, len(LABELS))
    sizes = np.array([len(indices) for indices in skewed])
    assert sizes.min() >= 5
    assert sizes.max() > 3 * np.median(sizes)
    even = np.array([len(i) for i in quantity_skew_partition(len(LABELS), 10, beta=1e4, seed=4)])
    assert even.max() - even.min() < 15  # beta -> inf: equal sizes


def test_same_seed_same_partition_other_seed_other_partition():
    for make in (
        lambda seed: iid_partition(len(LABELS), 5, seed),
        lambda seed: dirichlet_partition(LABELS, 5, 0.3, seed),
        lambda seed: shard_partition(LABELS, 5, 2, seed),
        lambda seed: quantity_skew_partition(len(LABELS), 5, 0.5, seed),
    ):
        first, again, other = make(7), make(7), make(8)
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_label_counts_and_table():
    partition = [torch.tensor([0, 1]), torch.tensor([2])]
    counts = label_counts(partition, torch.tensor([1, 1, 0]), num_classes=3)
    assert counts.tolist() == [[0, 2, 0], [1, 0, 0]]
    table = format_counts(counts)
    assert table.splitlines()[2].split() == ["0", "2", "|", "0", "2", "0"]
    long_table = format_counts(np.ones((30, 2), dtype=int), max_rows=4)
    assert len(long_table.splitlines()) == 2 + 4 + 1  # header, rule, 2 + "..." + 2


@pytest.mark.parametrize(
    ("max_rows", "clients"), [(1, ["0"]), (2, ["0", "29"]), (3, ["0", "1", "29"])]
)
def test_format_counts_shows_max_rows_clients(max_rows, clients):
    table = format_counts(np.arange(60).reshape(30, 2), max_rows=max_rows).splitlines()[2:]
    assert [row.split()[0] for row in table if row.strip() != "..."] == clients
    assert sum(row.strip() == "..." for row in table) == 1
    with pytest.raises(ValueError, match="max_rows must be >= 1, got 0"):
        format_counts(np.ones((3, 2), dtype=int), max_rows=0)


def test_shard_sizes_differ_by_one_and_the_first_shards_take_the_leftovers():
    # 7 samples, 1 client x 3 shards: shards of 3, 2, 2 (np.array_split), dealt in random order
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    partition = shard_partition(labels, num_clients=3, shards_per_client=1, seed=0)
    assert sorted(len(p) for p in partition) == [2, 2, 3]
    assert [0, 1, 2] in [p.tolist() for p in partition]  # the first shard holds the extra sample


def test_numpy_numbers_are_accepted():
    expected = dirichlet_partition(LABELS, 10, alpha=1.0, seed=3)
    for alpha in (np.int64(1), np.float32(1.0)):
        got = dirichlet_partition(LABELS, np.int64(10), alpha=alpha, seed=3)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert len(quantity_skew_partition(100, 5, beta=np.float64(0.5))) == 5
    with pytest.raises(TypeError, match="alpha must be a real number, got True"):
        dirichlet_partition(LABELS, 10, alpha=True)
    with pytest.raises(TypeError, match="num_clients must be an int, got 2.0"):
        iid_partition(10, 2.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: iid_partition(5, 6), "num_samples must be >= 6, got 5"),
        (lambda: iid_partition(10, 0), "num_clients must be >= 1, got 0"),
        (lambda: dirichlet_partition(LABELS, 4, alpha=0), r"alpha must lie in \(0.0, inf\), got 0"),
        (lambda: dirichlet_partition(LABELS, 4, alpha=math.inf), r"alpha must lie in \(0.0, inf"),
        (lambda: dirichlet_partition(LABELS.astype(float), 4, 1.0), "labels must be a 1-D integer"),
        (lambda: shard_partition(LABELS[:10], 4, 3), "number of labels must be >= 12, got 10"),
        (lambda: quantity_skew_partition(20, 5, 0.5, min_samples=5), "num_samples must be >= 25"),
        (lambda: quantity_skew_partition(20, 5, beta=-1.0), r"beta must lie in \(0.0, inf\)"),
        (lambda: iid_partition(10, 2, seed=-1), r"seed must be an integer in \[0, 4294967295\]"),
        (lambda: shard_partition(LABELS, 4, seed=2**32), r"seed must be an integer in \[0, 42"),
    ],
)
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()
