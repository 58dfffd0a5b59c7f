"""fedsim's numpy partitioners give flwr-datasets' own splits, index for index, on fixed seeds.

flwr-datasets is imported here only (it is not imported by a run); the library's partitioner
sees a two-column table (label, row) and its partitions' `row` columns are compared with fedsim's.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from fedsim.data import partition

fp = pytest.importorskip("flwr_datasets.partitioner")


def library(partitioner, labels: np.ndarray) -> list[list[int]]:
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    partitioner.dataset = Dataset.from_dict({"label": labels.tolist(), "row": np.arange(len(labels)).tolist()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [list(partitioner.load_partition(i)["row"]) for i in range(partitioner.num_partitions)]


def ours(plugin, labels, n, seed) -> list[list[int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [p.tolist() for p in plugin.split(labels, n, seed)]


LABELS = {"balanced": np.repeat(np.arange(10), 60),
          "skewed": np.random.default_rng(7).choice(5, size=737, p=[0.5, 0.2, 0.15, 0.1, 0.05])}


@pytest.mark.parametrize("labels", LABELS, ids=list(LABELS))
@pytest.mark.parametrize("seed", [0, 1, 12345])
@pytest.mark.parametrize("n", [3, 10, 17])
def test_dirichlet_and_shards_equal_flwr_datasets(labels, seed, n):
    y = LABELS[labels]
    for alpha, balancing in [(0.3, False), (1.0, True), (100.0, False)]:
        lib = fp.DirichletPartitioner(num_partitions=n, partition_by="label", alpha=alpha, min_partition_size=0,
                                      self_balancing=balancing, shuffle=True, seed=seed)
        assert ours(partition.Dirichlet(alpha=alpha, min_size=0, self_balancing=balancing), y, n, seed) \
            == library(lib, y), (alpha, balancing)
    for spc in (1, 2, 3):
        lib = fp.ShardPartitioner(num_partitions=n, partition_by="label", num_shards_per_partition=spc,
                                  shuffle=True, seed=seed)
        assert ours(partition.Shards(shards_per_client=spc), y, n, seed) == library(lib, y), spc


@pytest.mark.parametrize("labels", LABELS, ids=list(LABELS))
@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("n", [4, 10, 13])
def test_pathological_iid_and_sizes_equal_flwr_datasets(labels, seed, n):
    y = LABELS[labels]
    for mode in ("random", "deterministic", "first-deterministic"):
        for k in (1, 2, 3):
            lib = fp.PathologicalPartitioner(num_partitions=n, partition_by="label", num_classes_per_partition=k,
                                             class_assignment_mode=mode, shuffle=True, seed=seed)
            assert ours(partition.Pathological(classes_per_client=k, class_assignment=mode), y, n, seed) \
                == library(lib, y), (mode, k)
    perm = np.random.default_rng(seed).permutation(len(y))
    assert ours(partition.Iid(), y, n, seed) == [perm[p].tolist() for p in
                                                 map(np.asarray, library(fp.IidPartitioner(num_partitions=n), y[perm]))]
    cls = {"linear": fp.LinearPartitioner, "square": fp.SquarePartitioner, "exponential": fp.ExponentialPartitioner}
    for dist in ("linear",) + (("square",) if n <= 10 else ()) + (("exponential",) if n <= 4 else ()):
        order = np.random.default_rng(seed + 1).permutation(n)
        lib = [np.asarray(p) for p in library(cls[dist](num_partitions=n), y[perm])]
        assert ours(partition.QuantitySkew(distribution=dist), y, n, seed) == [perm[lib[j]].tolist() for j in order]


def test_dirichlet_min_size_resampling_equals_flwr_datasets():
    y = LABELS["skewed"]
    lib = fp.DirichletPartitioner(num_partitions=8, partition_by="label", alpha=0.2, min_partition_size=20,
                                  self_balancing=False, shuffle=True, seed=4)
    assert ours(partition.Dirichlet(alpha=0.2, min_size=20), y, 8, 4) == library(lib, y)


def test_partitioning_imports_neither_flwr_datasets_nor_datasets_and_leaves_process_state():
    code = ("import os, sys, warnings, logging, numpy as np\n"
            "from fedsim.data import partition\n"
            "f = list(warnings.filters); env = dict(os.environ)\n"
            "y = np.repeat(np.arange(10), 50)\n"
            "for p in (partition.Iid(), partition.Dirichlet(), partition.Shards(), partition.Pathological(),"
            " partition.QuantitySkew()):\n"
            "    p.split(y, 10, 0)\n"
            "assert 'flwr_datasets' not in sys.modules and 'datasets' not in sys.modules\n"
            "assert warnings.filters == f and dict(os.environ) == env\n")
    subprocess.run([sys.executable, "-c", code], check=True)
