"""Split a pooled dataset's labels across clients, with flwr-datasets' partitioning semantics.

Each plugin returns one index array per client. The splits are those of flwr-datasets'
partitioners (IidPartitioner, DirichletPartitioner, ShardPartitioner, PathologicalPartitioner,
Linear/Square/ExponentialPartitioner) draw for draw from the same `numpy.random.Generator`
seeded with the `partition` stream's seed, reimplemented here in numpy so that a run pays
neither flwr-datasets' and Hugging Face `datasets`' imports nor a table per split, and leaves
the process's environment, logging and warning filters alone (a test compares every plugin
with the library's own output on fixed seeds). `natural` is for datasets generated client by
client (synthetic, linear_regression).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from fedsim.scenario.fields import bounded


def _contiguous_shards(n: int, num: int) -> list[np.ndarray]:
    """`datasets.Dataset.shard(num, i, contiguous=True)` for every i: the first n mod num get one more."""
    div, mod = divmod(n, num)
    out, start = [], 0
    for i in range(num):
        end = start + div + (1 if i < mod else 0)
        out.append(np.arange(start, end, dtype=np.int64))
        start = end
    return out


def _shuffled(rng: np.random.Generator, lists: list[list]) -> list[np.ndarray]:
    """Shuffle each list in place with `rng` (in order, as flwr-datasets does), as int64 arrays."""
    for indices in lists:
        rng.shuffle(indices)
    return [np.asarray(x, dtype=np.int64) for x in lists]


def _check_rows(labels: np.ndarray, num_clients: int) -> None:
    if num_clients > len(labels):
        raise ValueError("The number of partitions needs to be smaller than the number of samples in the dataset.")


def _dirichlet(labels: np.ndarray, n: int, alpha: float, min_size: int, balancing: bool,
               seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    _check_rows(labels, n)
    classes = sorted(np.unique(labels).tolist())
    alphas = np.full(n, float(alpha))
    avg = len(labels) / n
    tries = 0
    while True:
        parts: list[list[int]] = [[] for _ in range(n)]
        for k in classes:
            idx = np.nonzero(labels == k)[0]
            props = list(rng.dirichlet(alphas))
            if balancing:
                props = [0 if len(parts[j]) > avg else props[j] for j in range(n)]
                total = sum(props)
                props = [x / total for x in props]
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for j, chunk in enumerate(np.split(idx, cuts)):
                parts[j].extend(chunk.tolist())
        if min(len(x) for x in parts) >= min_size:
            break
        warnings.warn(f"Dirichlet partition: min_size ({min_size}) not met; resampling", stacklevel=2)
        if tries == 10:
            raise ValueError("The max number of attempts (10) was reached. Please update the values of alpha "
                             "and try again.")
        tries += 1
    return _shuffled(rng, parts)


def _shards(labels: np.ndarray, n: int, per_client: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    _check_rows(labels, n)
    order = np.argsort(labels, kind="stable")  # the library sorts the table by label (stable)
    used = n * per_client
    size = int(len(labels) / used)
    usable = int(np.floor(len(labels) / size)) if size > 0 else 0
    if size == 0 or usable < n:
        raise ValueError("The specified configuration results in empty partitions")
    chosen = rng.permutation(usable)[:used]
    bounds = np.cumsum(np.ones(n) * per_client, dtype=int)
    parts: list[list[int]] = []
    for shard_ids in np.split(chosen, bounds)[:-1]:
        rows: list[int] = []
        for s in shard_ids:
            rows.extend(range(int(s * size), min(int((s + 1) * size), len(labels))))
        parts.append(rows)
    return [order[x] for x in _shuffled(rng, parts)]


def _pathological(labels: np.ndarray, n: int, per_client: int, mode: str, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    _check_rows(labels, n)
    classes = sorted(np.unique(labels).tolist())
    if per_client > len(classes):
        raise ValueError(f"classes_per_client ({per_client}) is greater than the number of classes "
                         f"({len(classes)})")
    chosen: list[list] = [[] for _ in range(n)]
    for j in range(n):
        if mode == "first-deterministic":
            chosen[j].append(classes[j % len(classes)])
            while len(chosen[j]) < per_client:
                c = rng.choice(classes, size=1)[0]
                if c not in chosen[j]:
                    chosen[j].append(c)
        elif mode == "deterministic":
            chosen[j] = [classes[(j + i) % len(classes)] for i in range(per_client)]
        else:
            chosen[j] = rng.choice(classes, size=per_client, replace=False).tolist()
    uses = {c: sum(c in ch for ch in chosen) for c in classes}
    for c in classes:
        if uses[c] > int(np.sum(labels == c)):
            raise ValueError(f"Label {c} is needed by {uses[c]} clients but has only "
                             f"{int(np.sum(labels == c))} examples")
    parts: list[list] = [[] for _ in range(n)]
    for c in classes:
        if uses[c] == 0:
            continue
        chunks = np.array_split(np.where(labels == c)[0], uses[c])
        k = 0
        for j in range(n):
            if c in chosen[j]:
                parts[j].extend(chunks[k])
                k += 1
    return _shuffled(rng, parts)


def _sizes(n_rows: int, n: int, distribution: str) -> list[np.ndarray]:
    fn = {"linear": lambda x: x, "square": np.square, "exponential": np.exp}[distribution]
    units = fn(np.linspace(start=1, stop=n, num=n))
    sizes = np.array(units / units.sum() * n_rows, dtype=np.int64)
    sizes[-1] += n_rows - np.sum(sizes)
    if not all(v >= 1 for v in sizes):
        raise ValueError(f"The given specification of the parameter num_partitions={n} for the given dataset "
                         "results in the partitions sizes that are not greater than 0.")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i in range(n)]


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
        perm = np.random.default_rng(seed).permutation(len(labels))  # IidPartitioner is order-based
        _check_rows(labels, num_clients)
        return [perm[p] for p in _contiguous_shards(len(labels), num_clients)]


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
        return _dirichlet(labels, num_clients, self.alpha, self.min_size, self.self_balancing, seed)


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
        if num_clients * self.shards_per_client > len(labels):
            raise ValueError(f"shards: {num_clients} clients x {self.shards_per_client} shards is more "
                             f"shards than the {len(labels)} examples")
        return _shards(labels, num_clients, self.shards_per_client, seed)


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
        return _pathological(labels, num_clients, self.classes_per_client, self.class_assignment, seed)


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
        perm = np.random.default_rng(seed).permutation(len(labels))
        try:
            parts = _sizes(len(labels), num_clients, self.distribution)
        except ValueError as exc:
            raise ValueError(f"quantity_skew {self.distribution} cannot split {len(labels)} examples "
                             f"over {num_clients} clients: {exc}") from None
        # Shuffle which client gets which size, so client id carries no size information.
        order = np.random.default_rng(seed + 1).permutation(num_clients)
        return [perm[parts[j]] for j in order]


@dataclass(frozen=True, kw_only=True)
class Natural:
    """Use the dataset's own per-client split (synthetic, linear_regression, leaf, hf_natural)."""

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


