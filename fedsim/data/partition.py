"""Split a pooled dataset's labels across clients, using flwr-datasets' partitioners.

Each plugin returns one index array per client. The data never goes to flwr-datasets:
it only sees a two-column table (label, row index), so the split is exactly the
library's, and fedsim keeps the tensors. `natural` is for datasets generated client by
client (synthetic, linear_regression).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from fedsim.scenario.fields import bounded


def _run(partitioner, labels: np.ndarray) -> list[np.ndarray]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning, module="flwr_datasets")
    table = Dataset.from_dict({"label": labels.tolist(), "row": np.arange(len(labels)).tolist()})
    partitioner.dataset = table
    return [np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64)
            for i in range(partitioner.num_partitions)]


@dataclass(frozen=True, kw_only=True)
class Iid:
    """Uniformly random, equal-sized shares (flwr-datasets IidPartitioner)."""

    def split(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        """Split the examples across clients.

        Args:
            labels: (n,) int labels of the pooled training set.
            num_clients: N, the number of index arrays to return.
            seed: the `partition` stream's seed.

        Returns:
            N int64 arrays of row indices into `labels`.
        """
        from flwr_datasets.partitioner import IidPartitioner

        perm = np.random.default_rng(seed).permutation(len(labels))  # IidPartitioner is order-based
        return [perm[p] for p in _run(IidPartitioner(num_partitions=num_clients), labels[perm])]


@dataclass(frozen=True, kw_only=True)
class Dirichlet:
    """Per-client label mix π_k ~ Dir(α·1) (flwr-datasets DirichletPartitioner).

    Args:
        alpha: concentration; small α = few labels per client.
        min_size: resample until every client has at least this many examples.
        self_balancing: stop giving a label to clients already above the average size.
    """

    alpha: float = bounded(0.5, gt=0.0)
    min_size: int = bounded(2, ge=0)
    self_balancing: bool = False

    def split(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        """Split the examples across clients.

        Args:
            labels: (n,) int labels of the pooled training set.
            num_clients: N, the number of index arrays to return.
            seed: the `partition` stream's seed.

        Returns:
            N int64 arrays of row indices into `labels`.
        """
        from flwr_datasets.partitioner import DirichletPartitioner

        p = DirichletPartitioner(num_partitions=num_clients, partition_by="label", alpha=self.alpha,
                                 min_partition_size=self.min_size, self_balancing=self.self_balancing,
                                 shuffle=True, seed=seed)
        return _run(p, labels)


@dataclass(frozen=True, kw_only=True)
class Shards:
    """Sort by label, cut into shards, deal `shards_per_client` to each client.

    McMahan et al.'s pathological non-IID split (flwr-datasets ShardPartitioner).

    References:
        H. B. McMahan, E. Moore, D. Ramage, S. Hampson and B. Agüera y Arcas,
        "Communication-Efficient Learning of Deep Networks from Decentralized Data",
        AISTATS 2017 (the "pathological non-IID" MNIST partition of its experiments).
    """

    shards_per_client: int = bounded(2, ge=1, le=10_000)

    def split(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        """Split the examples across clients.

        Args:
            labels: (n,) int labels of the pooled training set.
            num_clients: N, the number of index arrays to return.
            seed: the `partition` stream's seed.

        Returns:
            N int64 arrays of row indices into `labels`.

        Raises:
            ValueError: if there are fewer examples than shards.
        """
        from flwr_datasets.partitioner import ShardPartitioner

        if num_clients * self.shards_per_client > len(labels):
            raise ValueError(f"shards: {num_clients} clients x {self.shards_per_client} shards is more "
                             f"shards than the {len(labels)} examples")
        p = ShardPartitioner(num_partitions=num_clients, partition_by="label",
                             num_shards_per_partition=self.shards_per_client, shuffle=True, seed=seed)
        return _run(p, labels)


@dataclass(frozen=True, kw_only=True)
class Pathological:
    """Each client holds exactly `classes_per_client` labels (flwr-datasets PathologicalPartitioner)."""

    classes_per_client: int = bounded(2, ge=1, le=100_000)
    class_assignment: Literal["random", "deterministic", "first-deterministic"] = "random"

    def split(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        """Split the examples across clients.

        Args:
            labels: (n,) int labels of the pooled training set.
            num_clients: N, the number of index arrays to return.
            seed: the `partition` stream's seed.

        Returns:
            N int64 arrays of row indices into `labels`.
        """
        import logging

        from flwr_datasets.partitioner import PathologicalPartitioner

        logging.getLogger("flwr_datasets").setLevel(logging.ERROR)
        p = PathologicalPartitioner(num_partitions=num_clients, partition_by="label",
                                    num_classes_per_partition=self.classes_per_client,
                                    class_assignment_mode=self.class_assignment, shuffle=True, seed=seed)
        return _run(p, labels)


@dataclass(frozen=True, kw_only=True)
class QuantitySkew:
    """IID labels, unequal sizes (flwr-datasets Linear/Square/ExponentialPartitioner).

    Client i's share ∝ (i+1) (linear), (i+1)² (square) or e^(i+1) (exponential); which client
    gets which size is then shuffled.
    """

    distribution: Literal["linear", "square", "exponential"] = "linear"

    def split(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        """Split the examples across clients.

        Args:
            labels: (n,) int labels of the pooled training set.
            num_clients: N, the number of index arrays to return.
            seed: the `partition` stream's seed.

        Returns:
            N int64 arrays of row indices into `labels`.

        Raises:
            ValueError: if the partitioner cannot give every client an example.
        """
        from flwr_datasets import partitioner as fp

        cls = {"linear": fp.LinearPartitioner, "square": fp.SquarePartitioner,
               "exponential": fp.ExponentialPartitioner}[self.distribution]
        perm = np.random.default_rng(seed).permutation(len(labels))
        try:
            parts = _run(cls(num_partitions=num_clients), labels[perm])
        except ValueError as exc:
            raise ValueError(f"quantity_skew {self.distribution} cannot split {len(labels)} examples "
                             f"over {num_clients} clients: {exc}") from None
        # Shuffle which client gets which size, so client id carries no size information.
        order = np.random.default_rng(seed + 1).permutation(num_clients)
        return [perm[parts[j]] for j in order]


@dataclass(frozen=True, kw_only=True)
class Natural:
    """Use the dataset's own per-client split (synthetic, linear_regression)."""

    natural: ClassVar[bool] = True  # keeps a per-client dataset's own split

    def split(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        """Always fail: a pooled dataset has no natural split (per-client datasets bypass this).

        Args:
            labels: unused.
            num_clients: unused.
            seed: unused.

        Raises:
            ValueError: always.
        """
        raise ValueError("partition 'natural' needs a dataset generated per client "
                         "(synthetic or linear_regression)")


