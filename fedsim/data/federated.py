"""Turn a dataset + partitioner into per-client train / local-test slices.

Every client's examples are stored contiguously (client c at offsets[c]:offsets[c+1]) so
that a client's data is a zero-copy slice, and the split is vectorised over clients.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedsim.data.datasets import least_squares_optimum
from fedsim.data.pooled import PerClient, Pooled
from fedsim.scenario.schema import HardClients


@dataclass(frozen=True)
class FederatedData:
    """A federation's data: every client's train and local-test rows, plus a global test set.

    Client c's training rows are `x_train[train_offsets[c]:train_offsets[c+1]]` (likewise for the
    local test split with `val_offsets`); `optimum` is the closed-form global optimum when the
    dataset has one (linear regression), in the flat layout of the `linear` model.
    """

    num_clients: int
    num_classes: int  # 0 = regression
    input_shape: tuple[int, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    train_offsets: np.ndarray  # (N+1,)
    x_val: np.ndarray  # each client's local test split (per-client accuracy, fairness)
    y_val: np.ndarray
    val_offsets: np.ndarray
    x_test: np.ndarray  # global test set
    y_test: np.ndarray
    optimum: np.ndarray | None = None

    @property
    def task(self) -> str:
        """"regression" when there are no classes, else "classification"."""
        return "regression" if self.num_classes == 0 else "classification"

    def train_slice(self, client: int) -> slice:
        """The slice of `x_train`/`y_train` holding `client`'s training rows (zero-copy)."""
        return slice(int(self.train_offsets[client]), int(self.train_offsets[client + 1]))

    def val_slice(self, client: int) -> slice:
        """The slice of `x_val`/`y_val` holding `client`'s local test rows."""
        return slice(int(self.val_offsets[client]), int(self.val_offsets[client + 1]))

    def num_examples(self) -> np.ndarray:
        """(N,) number of training examples per client."""
        return np.diff(self.train_offsets)

    def label_histograms(self) -> np.ndarray:
        """(N, C) fraction of each label in each client's training data.

        This is the measured histogram π̂_n from which FedAU's label-correlated participation
        probabilities are drawn (see `fedsim.world.participation.DirichletOverLabels`).

        Raises:
            ValueError: for a regression dataset.
        """
        if self.num_classes == 0:
            raise ValueError("label histograms need a classification dataset")
        owner = np.repeat(np.arange(self.num_clients), self.num_examples())
        counts = np.zeros((self.num_clients, self.num_classes))
        np.add.at(counts, (owner, self.y_train), 1.0)
        return counts / np.maximum(counts.sum(1, keepdims=True), 1.0)


def _split_local(x: np.ndarray, y: np.ndarray, offsets: np.ndarray, test_fraction: float,
                 rng: np.random.Generator):
    """Shuffle each client's rows and move floor(f·n_k) of them to its local test split."""
    sizes = np.diff(offsets)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    order = np.lexsort((rng.random(len(owner)), owner))  # shuffle within each client, vectorised
    rank = np.arange(len(owner)) - offsets[owner]
    n_val = np.floor(test_fraction * sizes).astype(np.int64)
    is_val = rank >= (sizes - n_val)[owner]
    tr, va = order[~is_val], order[is_val]
    train_off = np.concatenate([[0], np.cumsum(sizes - n_val)])
    val_off = np.concatenate([[0], np.cumsum(n_val)])
    return x[tr], y[tr], train_off, x[va], y[va], val_off


def federate(dataset, partition, num_clients: int, test_fraction: float, seed_of,
             hard: HardClients | None = None) -> FederatedData:
    """Build the federation: load, partition, optionally harden, then split off local tests.

    Args:
        dataset: a dataset plugin; `load` returns `Pooled` or `PerClient` data.
        partition: a partition plugin (ignored for `PerClient` data, which is split already).
        num_clients: N.
        test_fraction: fraction of each client's rows moved to its local test split (floored);
            unused when per-client data brings its own test rows (`PerClient.val_offsets`).
        seed_of: `seed_of(name)` gives the seed of each named random stream.
        hard: alters some clients' data before their local test split is taken.

    Returns:
        The federation, clients stored contiguously.

    Raises:
        ValueError: if there are fewer examples than clients, the partitioner fails or returns
            the wrong number of parts, or `hard` does not fit the data.
    """
    raw = dataset.load(num_clients, np.random.default_rng(seed_of("dataset")))
    own_val = isinstance(raw, PerClient) and raw.val_offsets is not None
    if isinstance(raw, PerClient):
        x, y, offsets = raw.x, raw.y, raw.offsets
        optimum = raw.optimum
        if len(offsets) - 1 != num_clients:
            raise ValueError(f"data.num_clients: is {num_clients}, but the dataset has {len(offsets) - 1} clients")
    else:
        assert isinstance(raw, Pooled)
        if len(raw.y) < num_clients:
            raise ValueError(f"{num_clients} clients but only {len(raw.y)} training examples to split")
        try:
            with np.errstate(all="ignore"):  # flwr-datasets' size maths can overflow on odd input
                parts = partition.split(raw.y, num_clients, seed_of("partition"))
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 — third-party partitioners fail in many ways on odd input
            raise ValueError(f"partitioner failed: {type(exc).__name__}: {exc}") from None
        if len(parts) != num_clients:
            raise ValueError(f"partitioner returned {len(parts)} parts for {num_clients} clients")
        rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        x, y = raw.x[rows], raw.y[rows]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        optimum = None
    if hard is not None:
        if raw.num_classes == 0:
            raise ValueError("hard_clients: only for classification data (a regression's closed-form "
                             "optimum would no longer hold)")
        rng = np.random.default_rng(seed_of("hard_clients"))
        chosen = hard_clients_chosen(hard, num_clients, rng)
        x, y = make_hard(hard, x, y, offsets, chosen, raw.num_classes, rng)
        if own_val:  # the clients' own test rows are theirs too: alter them alike
            xv_hard, yv_hard = make_hard(hard, raw.x_val, raw.y_val, raw.val_offsets, chosen, raw.num_classes, rng)
            raw = replace(raw, x_val=xv_hard, y_val=yv_hard)
    if own_val:  # the data's own per-client test rows (LEAF's per-user split): kept as they are
        xt, yt, toff, xv, yv, voff = x, y, offsets, raw.x_val, raw.y_val, raw.val_offsets
    else:
        xt, yt, toff, xv, yv, voff = _split_local(x, y, offsets, test_fraction,
                                                   np.random.default_rng(seed_of("local_split")))
    x_test, y_test = (xv, yv) if raw.x_test is None else (raw.x_test, raw.y_test)  # None: union of local tests
    if optimum is not None:
        # The optimum the clients can reach is that of the rows they train on: the local test
        # split is held out, so recompute it on the training rows (on all rows, the distance
        # had a floor of a few hundredths with the default test_fraction).
        optimum = least_squares_optimum(xt.astype(np.float64), yt.astype(np.float64), toff,
                                        getattr(dataset, "importance", "examples"))
    return FederatedData(num_clients, raw.num_classes, tuple(raw.x.shape[1:]), xt, yt, toff,
                         xv, yv, voff, x_test, y_test, optimum)


def hard_clients_chosen(cfg: HardClients, num_clients: int, rng: np.random.Generator) -> np.ndarray:
    """The ids of the clients `cfg` makes harder (explicit ids, or a random `fraction`), sorted.

    Args:
        cfg: the `hard_clients:` block.
        num_clients: N.
        rng: draws the random subset when no ids are given.

    Returns:
        Sorted unique int64 client ids.

    Raises:
        ValueError: if an explicit id is not a client.
    """
    bad = [c for c in cfg.clients if not 0 <= c < num_clients]
    if bad:
        raise ValueError(f"hard_clients.clients: client {bad[0]} is not in 0..{num_clients - 1}")
    if cfg.clients:
        return np.unique(np.asarray(cfg.clients, dtype=np.int64))
    k = int(np.ceil(cfg.fraction * num_clients))
    return np.sort(rng.choice(num_clients, size=k, replace=False)).astype(np.int64)


def make_hard(cfg: HardClients, x: np.ndarray, y: np.ndarray, offsets: np.ndarray, chosen: np.ndarray,
              num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Copy (x, y) with the chosen clients' rows altered: label noise, feature noise, negation.

    Args:
        cfg: the `hard_clients:` block (what to do to the rows).
        x: all examples, client c at offsets[c]:offsets[c+1].
        y: their int labels.
        offsets: (N+1,) client boundaries.
        chosen: ids of the clients to alter.
        num_classes: C; a flipped label moves to one of the other C − 1 classes.
        rng: drives the noise.

    Returns:
        New (x, y); the inputs are not modified.

    Raises:
        ValueError: if label noise is asked of data with fewer than two classes.
    """
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    rows = np.isin(owner, chosen)
    x, y = x.copy(), y.copy()
    if cfg.label_noise > 0:
        if num_classes < 2:
            raise ValueError("hard_clients.label_noise needs a classification dataset")
        flip = rows & (rng.random(len(y)) < cfg.label_noise)
        shift = rng.integers(1, num_classes, size=int(flip.sum()))  # never the same class
        y[flip] = (y[flip] + shift) % num_classes
    if cfg.feature_noise > 0:
        x[rows] += (cfg.feature_noise * rng.normal(size=x[rows].shape)).astype(x.dtype)
    if cfg.negate:
        x[rows] = -x[rows]
    return x, y
