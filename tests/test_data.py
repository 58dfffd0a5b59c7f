"""Datasets and partitions: every example lands exactly once; closed-form optimum is right."""

import numpy as np
import pytest

from fedsim.data import datasets, partition
from fedsim.data.federated import federate


def seeds(name):
    return {"dataset": 1, "partition": 2, "local_split": 3}[name]


@pytest.mark.parametrize("part", [partition.Iid(), partition.Dirichlet(alpha=0.3), partition.Shards(),
                                  partition.Pathological(classes_per_client=2),
                                  partition.QuantitySkew(distribution="linear")])
def test_partitions_cover_every_example_once(part):
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    parts = part.split(labels, 8, seed=0)
    rows = np.concatenate(parts)
    if isinstance(part, partition.Pathological):
        assert len(np.unique(rows)) == len(rows)  # may leave unused classes out, never duplicates
        assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    elif isinstance(part, partition.Shards):
        # 16 equal shards of floor(1000/16) = 62: the 8-example remainder is left out
        assert len(np.unique(rows)) == len(rows) == 992
    else:
        assert sorted(rows.tolist()) == list(range(1000))
    assert parts[0].tolist() == part.split(labels, 8, seed=0)[0].tolist()  # deterministic


def test_dirichlet_skews_labels():
    labels = np.repeat(np.arange(10), 100)
    skewed = partition.Dirichlet(alpha=0.05).split(labels, 10, seed=0)
    flat = partition.Iid().split(labels, 10, seed=0)
    distinct = lambda ps: np.mean([len(np.unique(labels[p])) for p in ps])  # noqa: E731
    assert distinct(skewed) < 5 < distinct(flat)


def test_federate_keeps_clients_contiguous_and_splits_locally():
    fd = federate(datasets.Digits(), partition.Dirichlet(alpha=0.5), 12, 0.25, seeds)
    assert fd.x_train.shape[1:] == (1, 8, 8) and fd.num_classes == 10
    sizes, vsizes = np.diff(fd.train_offsets), np.diff(fd.val_offsets)
    assert np.all(vsizes == np.floor(0.25 * (sizes + vsizes)))
    assert sizes.sum() + vsizes.sum() + len(fd.y_test) == 1797
    hist = fd.label_histograms()
    assert np.allclose(hist.sum(1), 1.0)


def test_linear_regression_optimum_is_the_least_squares_solution():
    ds = datasets.LinearRegression(dim=3, samples_per_client=15, heterogeneity=1.0, importance="examples")
    raw = ds.load(6, np.random.default_rng(0))
    xa = np.c_[raw.x.astype(np.float64), np.ones(len(raw.x))]
    expected = np.linalg.lstsq(xa, raw.y.astype(np.float64), rcond=None)[0]
    assert np.allclose(raw.optimum, expected, atol=1e-4)


def test_uniform_importance_optimum_with_unequal_sizes():
    # p_k = 1/N: w* = (sum A_k/n_k)^-1 sum b_k/n_k — check against a per-client loop
    ds = datasets.LinearRegression(dim=2, samples_per_client=10, size_sigma=0.8, importance="uniform")
    raw = ds.load(5, np.random.default_rng(1))
    a, b = np.zeros((3, 3)), np.zeros(3)
    for k in range(5):
        s = slice(raw.offsets[k], raw.offsets[k + 1])
        xa = np.c_[raw.x[s].astype(np.float64), np.ones(s.stop - s.start)]
        a += xa.T @ xa / (s.stop - s.start)
        b += xa.T @ raw.y[s] / (s.stop - s.start)
    assert np.allclose(raw.optimum, np.linalg.solve(a, b), atol=1e-4)


def test_synthetic_leaf_shapes():
    raw = datasets.Synthetic(samples_per_client=20, size_sigma=0.5).load(30, np.random.default_rng(0))
    assert raw.x.shape[1] == 60 and raw.offsets[-1] == len(raw.y)
    assert set(np.unique(raw.y)) <= set(range(10))


@pytest.mark.parametrize("importance", ["examples", "uniform"])
def test_federated_optimum_is_that_of_the_training_rows(importance):
    """The local test split is held out, so the reachable optimum (and `optimum_distance`) is
    the least-squares solution of the training rows: Σ_k p_k ∇F_k(w*) = 0 on them."""
    from fedsim.data.partition import Natural

    ds = datasets.LinearRegression(dim=3, samples_per_client=20, heterogeneity=1.0, noise=0.5, importance=importance)
    fd = federate(ds, Natural(), 8, 0.25, seeds)
    grad = np.zeros(4)
    for k in range(8):
        s = slice(fd.train_offsets[k], fd.train_offsets[k + 1])
        xa = np.c_[fd.x_train[s].astype(np.float64), np.ones(s.stop - s.start)]
        r = xa @ fd.optimum - fd.y_train[s].astype(np.float64)
        grad += xa.T @ r / (s.stop - s.start if importance == "uniform" else len(fd.y_train))
    assert np.linalg.norm(grad) < 1e-9
    # the optimum of every row (train + local test) is measurably elsewhere
    assert np.linalg.norm(fd.optimum - ds.load(8, np.random.default_rng(seeds("dataset"))).optimum) > 1e-3
