"""Shared server- and client-side maths of the strategies, as free functions.

A strategy is a frozen dataclass whose fields are its hyperparameters (= the YAML keys
under `strategy:`). Its mutable server state is an explicit value returned by `init`
and threaded through every call; the strategy object itself never changes. What a
strategy declares and which hooks it has (aggregate, receive, tick, configure,
client_update, client_report) is the contract of `fedsim.strategy.contracts`.

Strategies must never mutate `params`, `state` or the updates passed in.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from fedsim.types import ArrivalInfo, ClientUpdate, Params, RoundInfo

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
    """Normalised aggregation weights a_i over a cohort (McMahan et al., AISTATS 2017).

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
                     stale_value: float = 0.0, avg_staleness: float | None = None,
                     convention: str = "fedsim") -> float:
    """Staleness discount s(τ); see `fedsim.strategy.server_opt.StalenessDiscount`."""
    from fedsim.strategy.server_opt import StalenessDiscount

    return StalenessDiscount(kind=kind, exponent=exponent, cutoff=cutoff, stale_value=stale_value,
                             avg_staleness=avg_staleness, convention=convention).weight(staleness)


def sorted_updates(updates: Sequence[ClientUpdate]) -> list[ClientUpdate]:
    """Updates in a canonical order (client id, then base version) so that float sums do
    not depend on arrival order."""
    return sorted(updates, key=lambda u: (u.client, u.base_version))


def least_squares_moments(trainer) -> tuple[np.ndarray, np.ndarray] | None:
    """(A_k, b_k) of the local least-squares loss F_k(w) = 1/(2n_k)‖X̃_k w − y_k‖², with
    A_k = X̃ᵀX̃/n_k and b_k = X̃ᵀy/n_k (X̃ = [X 1], the `linear` model's layout: weights then
    bias). None when the client's model is not that linear regression (Lari et al., arXiv 2409.13451)."""
    rt = trainer.rt
    x = trainer.x
    if not rt.regression or x.ndim != 2 or rt.model.flat.numel() != x.shape[1] + 1 or len(trainer.y) == 0:
        return None
    xa = np.concatenate([x.cpu().numpy().astype(np.float64), np.ones((x.shape[0], 1))], axis=1)
    y = trainer.y.cpu().numpy().astype(np.float64)
    n = float(len(y))
    return xa.T @ xa / n, xa.T @ y / n


def prox_solve(trainer, anchor: np.ndarray, rho: float, linear: np.ndarray | None = None,
               start: np.ndarray | None = None) -> np.ndarray:
    """argmin_w F_k(w) + ⟨linear, w⟩ + (ρ/2)‖w − anchor‖² (the ADMM local step, Boyd et al., FnT ML 2011, Sec. 7.1).

    Closed form (A_k + ρI)^{-1}(b_k + ρ·anchor − linear) for the linear-regression model;
    otherwise the client's local SGD (`local_steps`, `lr`) on the same objective from
    `start` (default: `anchor`). Returns float64."""
    lin = np.zeros(anchor.size) if linear is None else np.asarray(linear, dtype=np.float64)
    moments = least_squares_moments(trainer)
    if moments is not None:
        a, b = moments
        return np.linalg.solve(a + rho * np.eye(a.shape[0]), b + rho * anchor.astype(np.float64) - lin)
    import torch  # only the SGD fallback needs torch

    dev = trainer.rt.device
    anc = torch.as_tensor(anchor.astype(np.float32), device=dev)
    lt = torch.as_tensor(lin.astype(np.float32), device=dev)
    x0 = anchor if start is None else start
    new, _ = trainer.sgd(np.asarray(x0, dtype=np.float32), extra_grad=lambda w: lt + rho * (w - anc))
    return new.astype(np.float64)


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
    deltas written in (MIFA, Gu et al., NeurIPS 2021; FedVARP, Jhunjhunwala et al., UAI 2022). `table=None` means all
    zeros (lazy allocation before the first update). The input table is not modified."""
    d = updates[0].delta.size
    out = np.zeros((num_clients, d), dtype=np.float32) if table is None else table.copy()
    participant_mask(updates, num_clients)  # range check
    for u in updates:
        out[u.client] = u.delta
    return out


def consensus_average(last: Mapping[int, np.ndarray], updates: Sequence[ClientUpdate],
                      memory: bool) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Consensus-ADMM server step z = mean of the messages (Boyd et al., FnT ML 2011, Sec. 7.1).

    The message is the update's model (`ClientUpdate.model`). Without memory, the mean runs over this
    round's messages; with memory, over every client's last message (`last`, returned
    updated). Callers handle the empty round.
    """
    ups = sorted_updates(updates)
    if not memory:
        msgs = [u.model for u in ups]
        return dict(last), weighted_sum(msgs, np.full(len(msgs), 1.0 / len(msgs))).astype(np.float32)
    new = dict(last)
    new.update({u.client: u.model.copy() for u in ups})
    msgs = [new[k] for k in sorted(new)]
    return new, weighted_sum(msgs, np.full(len(msgs), 1.0 / len(msgs))).astype(np.float32)


__all__ = [
    "ArrivalInfo",
    "ClientUpdate",
    "RoundInfo",
    "apply_delta",
    "consensus_average",
    "example_weights",
    "least_squares_moments",
    "prox_solve",
    "participant_mask",
    "replace_rows",
    "sorted_updates",
    "staleness_weight",
    "weighted_sum",
]
