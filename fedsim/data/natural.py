"""The data's own partition: one client per user (LEAF) or per natural id (a saved HF dataset).

Shared by `fedsim.data.leaf` and `fedsim.data.files.HFNatural`. The loaders bring every row
with the index of its user in a sorted list of user ids (`owner`); this module chooses the
users that become clients and lays their rows out client by client:

- Users are ordered by sorting their ids (as flwr-datasets' NaturalIdPartitioner numbers its
  partitions), and client c is the c-th chosen user in that order.
- Users with fewer than `min_samples` training rows are left out; then either the first
  `max_clients` remaining users are taken, or `sample_clients` of them are drawn without
  replacement from the `dataset` random stream (so the sample depends on the seed only).
- Test rows of chosen users become those clients' local test splits; test rows of users with
  no training rows (LEAF's `-t user` split) go to the global test set only. The global test set
  is the union of both. When no chosen user has test rows, the local test splits are cut by
  `data.test_fraction`; when there are no test rows at all, the global test set is the union of
  those local test splits.
"""

from __future__ import annotations

import numpy as np

from fedsim.data.pooled import PerClient


def selection_problem(max_clients: int | None, sample_clients: int | None, unit: str) -> None:
    """Refuse both ways of choosing clients at once (a loader's `validate`).

    Args:
        max_clients: the first N users, or None.
        sample_clients: a random N users, or None.
        unit: what one client is, for the message ("users", "ids").

    Raises:
        ValueError: if both are set.
    """
    if max_clients is not None and sample_clients is not None:
        raise ValueError(f"set max_clients (the first N {unit}) or sample_clients (a random N), not both")


def count_problems(max_clients: int | None, sample_clients: int | None, num_clients: int,
                   unit: str) -> list[str]:
    """A loader's `check_clients`: the number of clients taken must be data.num_clients.

    Args:
        max_clients: the first N users, or None.
        sample_clients: a random N users, or None.
        num_clients: data.num_clients.
        unit: what one client is, for the message ("user", "id").

    Returns:
        At most one one-line problem, keyed by the option.
    """
    for key, n in (("max_clients", max_clients), ("sample_clients", sample_clients)):
        if n is not None and n != num_clients:
            return [f"{key}: is {n}, but data.num_clients is {num_clients}: one client per {unit} taken, "
                    "so they must be equal"]
    return []


def select_users(train_sizes: np.ndarray, min_samples: int, max_clients: int | None,
                 sample_clients: int | None, rng: np.random.Generator, where: str) -> np.ndarray:
    """The users that become clients, as sorted indices into the sorted user list.

    Args:
        train_sizes: (U,) training rows of each user, users in sorted id order.
        min_samples: users with fewer training rows are left out (at least 1 row is always needed).
        max_clients: keep the first this many eligible users (None = all).
        sample_clients: draw this many eligible users without replacement (None = all).
        rng: the `dataset` stream (draws the sample).
        where: names the data in error messages.

    Returns:
        Sorted int64 user indices.

    Raises:
        ValueError: if no user is eligible or fewer than `sample_clients` are.
    """
    eligible = np.nonzero(train_sizes >= max(min_samples, 1))[0]
    if len(eligible) == 0:
        raise ValueError(f"data.dataset.min_samples: no user of {where} has {max(min_samples, 1)} or more "
                         f"training examples ({len(train_sizes)} users)")
    if max_clients is not None:
        eligible = eligible[:max_clients]
    if sample_clients is not None:
        if sample_clients > len(eligible):
            raise ValueError(f"data.dataset.sample_clients: is {sample_clients}, but {where} has only "
                             f"{len(eligible)} users with >= {max(min_samples, 1)} training examples")
        eligible = eligible[np.sort(rng.choice(len(eligible), size=sample_clients, replace=False))]
    return eligible.astype(np.int64)


def _rows_of(owner: np.ndarray, client_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of chosen users, grouped by client (stable: each user's rows keep their order), and offsets."""
    client = np.where(owner >= 0, client_of[np.maximum(owner, 0)], -1)
    keep = np.nonzero(client >= 0)[0]
    rows = keep[np.argsort(client[keep], kind="stable")]
    counts = np.bincount(client[keep], minlength=int(client_of.max()) + 1)  # = N: every client has a count
    return rows, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def assemble(x: np.ndarray, y: np.ndarray, owner: np.ndarray, x_test: np.ndarray | None,
             y_test: np.ndarray | None, owner_test: np.ndarray | None, chosen: np.ndarray,
             num_users: int, num_classes: int) -> PerClient:
    """Lay the chosen users' rows out client by client (see the module docstring for the rules).

    Args:
        x: training inputs of every user.
        y: their labels.
        owner: (n,) user index of each training row (into the sorted user list).
        x_test: test inputs, or None when the data has no test rows.
        y_test: their labels.
        owner_test: (m,) user index of each test row, -1 for a user with no training rows.
        chosen: sorted user indices that become clients 0..N-1.
        num_users: U, the length of the sorted user list.
        num_classes: C.

    Returns:
        The per-client data; `x_val` set when chosen users have their own test rows.
    """
    client_of = np.full(num_users, -1, dtype=np.int64)
    client_of[chosen] = np.arange(len(chosen))
    rows, offsets = _rows_of(owner, client_of)
    out = PerClient(x[rows], y[rows], offsets, None, None, num_classes)
    if x_test is None or owner_test is None or len(owner_test) == 0:
        return out
    vrows, voff = _rows_of(owner_test, client_of)
    orphans = np.nonzero(owner_test < 0)[0]  # users with test rows only (LEAF's -t user)
    if len(vrows) == 0:  # no client has its own test rows: test_fraction cuts the local splits
        if len(orphans) == 0:
            return out
        return PerClient(out.x, out.y, offsets, x_test[orphans], y_test[orphans], num_classes)
    x_val, y_val = x_test[vrows], y_test[vrows]
    if len(orphans) == 0:  # the global test set is the union of the local ones (no copy)
        gx, gy = None, None
    else:
        gx = np.concatenate([x_val, x_test[orphans]])
        gy = np.concatenate([y_val, y_test[orphans]])
    return PerClient(out.x, out.y, offsets, gx, gy, num_classes, x_val=x_val, y_val=y_val, val_offsets=voff)


def check_count(chosen: np.ndarray, num_clients: int, where: str) -> None:
    """Refuse a federation whose size is not the scenario's `data.num_clients`.

    Args:
        chosen: the users that become clients.
        num_clients: the scenario's N.
        where: names the data and the selection in the message.

    Raises:
        ValueError: naming the number of users to set.
    """
    if len(chosen) != num_clients:
        raise ValueError(f"data.num_clients: is {num_clients}, but {where} gives {len(chosen)} clients; "
                         f"set data.num_clients: {len(chosen)} (or data.dataset.max_clients / sample_clients)")
