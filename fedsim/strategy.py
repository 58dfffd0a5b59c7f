"""The strategy contract, and shared maths as free functions.

A strategy is a frozen dataclass whose fields are its hyperparameters (= the YAML keys
under `strategy:`). Its mutable server state is an explicit value returned by `init`
and threaded through every call; the strategy object itself never changes.

Server side (at least one of):
  * `aggregate(state, params, updates, info: RoundInfo) -> (state, params)` for sync rounds;
  * `receive(state, params, update, info: ArrivalInfo) -> (state, params | None)` for async
    arrivals, returning new params when it commits (FedBuff commits every K arrivals).
  * `tick(state, params, info: ArrivalInfo) -> (state, params | None)` for strategies that
    commit on a timer (`commit_interval` attribute, e.g. FedFix).

Optional:
  * `configure(state, client, info) -> dict` — per-client values sent down with the model.
  * `client_update(task, trainer, client_state) -> (ClientUpdate, client_state)` — the
    client-side rule when the algorithm changes local training (FedProx, SCAFFOLD,
    FedSpeed, ADMM, FedCE); per-client state is stored by the engine, keyed by client id.
  * `client_report(state) -> {client: {key: value}}` — per-client numbers logged in
    clients.jsonl (FedAU weight estimates, FedCE contributions).

Strategies must never mutate `params`, `state` or the updates passed in.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from fedsim.types import ArrivalInfo, ClientUpdate, Params, RoundInfo


@runtime_checkable
class Strategy(Protocol):
    """Minimal structural type every strategy satisfies."""

    def init(self, params: Params, num_clients: int) -> Any: ...


def supports_sync(strategy: object) -> bool:
    return callable(getattr(strategy, "aggregate", None))


def supports_async(strategy: object) -> bool:
    return callable(getattr(strategy, "receive", None)) or callable(getattr(strategy, "tick", None))


def modes(strategy: object) -> tuple[str, ...]:
    out = []
    if supports_sync(strategy):
        out.append("sync")
    if supports_async(strategy):
        out.append("async")
    return tuple(out)


# ---------------------------------------------------------------------------
# Shared maths
# ---------------------------------------------------------------------------


def weighted_sum(vectors: Sequence[np.ndarray], weights: Iterable[float]) -> np.ndarray:
    """Σ_i w_i v_i in float64 (then the caller casts), independent of list order only
    up to float rounding — callers pass updates sorted by client id for determinism."""
    w = np.asarray(list(weights), dtype=np.float64)
    if len(vectors) == 0:
        raise ValueError("weighted_sum of no vectors")
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
    return w @ stacked


def apply_delta(params: Params, step: np.ndarray, lr: float = 1.0) -> Params:
    """x + lr * step, returned as a new float32 vector."""
    return (params.astype(np.float64) + lr * step).astype(np.float32)


def example_weights(updates: Sequence[ClientUpdate], weighting: str) -> np.ndarray:
    """Normalised aggregation weights a_i over a cohort (specs §3).

    `examples`: a_i = n_i / Σ n_j (McMahan);  `uniform`: a_i = 1/|S|.
    """
    if weighting == "examples":
        n = np.array([u.num_examples for u in updates], dtype=np.float64)
        total = n.sum()
        if total <= 0:
            return np.full(len(updates), 1.0 / len(updates))
        return n / total
    if weighting == "uniform":
        return np.full(len(updates), 1.0 / len(updates))
    raise ValueError(f"unknown weighting {weighting!r}")


def staleness_weight(staleness: int, kind: str, exponent: float = 0.5, cutoff: int = 0,
                     stale_value: float = 0.0, avg_staleness: float = 0.0) -> float:
    """Staleness discount s(τ) (specs §6.3).

    constant: 1; polynomial: ((1+τ̄)/(1+τ))^a, so s(τ̄) = 1;
    hinge: 1 if τ <= cutoff else 1/(1 + exponent*(τ - cutoff)) (FedAsync hinge);
    threshold: 1 if τ <= cutoff else `stale_value`.
    """
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float(((1.0 + avg_staleness) / (1.0 + staleness)) ** exponent)
    if kind == "hinge":
        return 1.0 if staleness <= cutoff else 1.0 / (1.0 + exponent * (staleness - cutoff))
    if kind == "threshold":
        return 1.0 if staleness <= cutoff else float(stale_value)
    raise ValueError(f"unknown staleness weighting {kind!r}")


def sorted_updates(updates: Sequence[ClientUpdate]) -> list[ClientUpdate]:
    """Updates in a canonical order (client id, then base version) so that float sums do
    not depend on arrival order."""
    return sorted(updates, key=lambda u: (u.client, u.base_version))


def participant_mask(updates: Sequence[ClientUpdate], num_clients: int) -> np.ndarray:
    """Boolean (N,) mask of the clients that returned an update this round (FedAU's I_n^t)."""
    mask = np.zeros(num_clients, dtype=bool)
    for u in updates:
        if not 0 <= u.client < num_clients:
            raise ValueError(f"update from client {u.client}, but there are {num_clients} clients")
        mask[u.client] = True
    return mask


def replace_rows(table: np.ndarray | None, updates: Sequence[ClientUpdate], num_clients: int) -> np.ndarray:
    """A copy of the (N, d) float32 table of each client's latest update with this round's
    deltas written in (MIFA / FedVARP server memory, specs §4.4). `table=None` means all
    zeros (lazy allocation before the first update). The input table is not modified."""
    d = updates[0].delta.size
    out = np.zeros((num_clients, d), dtype=np.float32) if table is None else table.copy()
    participant_mask(updates, num_clients)  # range check
    for u in updates:
        out[u.client] = u.delta
    return out


__all__ = [
    "ArrivalInfo",
    "ClientUpdate",
    "RoundInfo",
    "Strategy",
    "apply_delta",
    "example_weights",
    "modes",
    "participant_mask",
    "replace_rows",
    "sorted_updates",
    "staleness_weight",
    "supports_async",
    "supports_sync",
    "weighted_sum",
]
