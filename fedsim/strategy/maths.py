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
    """Compute Σ_i w_i v_i, streamed into one float64 accumulator (the caller casts the result).

    Memory is O(d): each vector is added in turn, in the order given (callers pass updates
    sorted by client id, `sorted_updates`, so the float sum is deterministic); no (m, d)
    stack is built.

    Args:
        vectors: the v_i, each of shape (d,), any float dtype.
        weights: one w_i per vector.

    Returns:
        float64 array of shape (d,).

    Raises:
        ValueError: no vectors.
    """
    w = np.asarray(list(weights), dtype=np.float64)
    if len(vectors) == 0:
        raise ValueError("weighted_sum of no vectors")
    if len(w) != len(vectors):
        raise ValueError(f"weighted_sum of {len(vectors)} vectors with {len(w)} weights")
    acc = np.zeros(np.shape(vectors[0]), dtype=np.float64)
    scratch = np.empty_like(acc)
    for wi, v in zip(w, vectors, strict=True):
        np.multiply(np.asarray(v), wi, out=scratch, casting="unsafe")
        acc += scratch
    return acc


def averaged_delta(updates: Sequence[ClientUpdate], weighting: str) -> np.ndarray:
    """FedAvg's aggregate Σ_{i∈S_t} a_i Δ_i over a cohort, summed in canonical client order.

    Args:
        updates: the cohort's delta updates (not empty).
        weighting: `examples` (a_i = n_i / Σ n_j) or `uniform` (a_i = 1/|S_t|).

    Returns:
        float64 array of shape (d,).

    References:
        McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
        Data", AISTATS 2017, FederatedAveraging (server step).
    """
    ups = sorted_updates(updates)
    return weighted_sum([u.delta for u in ups], example_weights(ups, weighting))


def apply_delta(params: Params, step: np.ndarray, lr: float = 1.0) -> Params:
    """Return x + lr · step as a new float32 vector (summed in float64; inputs untouched).

    Args:
        params: the model x, shape (d,).
        step: the step, shape (d,), any float dtype.
        lr: its scale.

    Returns:
        float32 array of shape (d,).
    """
    return (params.astype(np.float64) + lr * step).astype(np.float32)


def example_weights(updates: Sequence[ClientUpdate], weighting: str) -> np.ndarray:
    """Normalised aggregation weights a_i over a cohort.

    `examples`: a_i = n_i / Σ n_j (McMahan et al., AISTATS 2017, FederatedAveraging); `uniform`:
    a_i = 1/|S|. A cohort with no examples at all gets uniform weights.

    Args:
        updates: the cohort (not empty), in the order the weights are wanted.
        weighting: `examples` or `uniform`.

    Returns:
        float64 array of shape (|S|,) summing to 1.

    Raises:
        ValueError: an unknown `weighting`.
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
    """Staleness discount s(τ) of an update τ versions old.

    Args:
        staleness: τ ≥ 0, the versions applied since the client's base model.
        kind: the discount family, as `fedsim.strategy.server_opt.StalenessDiscount.kind`.
        exponent: the polynomial exponent.
        cutoff: the staleness beyond which `stale_value` applies (0: none).
        stale_value: the weight beyond the cutoff.
        avg_staleness: τ̄, the reference staleness (None: the convention's default).
        convention: `fedsim` (only `polynomial` is normalised) or `flsim` (every kind divided
            by its value at τ̄), as `StalenessDiscount.convention`.

    Returns:
        The weight, as `StalenessDiscount(...).weight(staleness)`.
    """
    from fedsim.strategy.server_opt import StalenessDiscount

    return StalenessDiscount(kind=kind, exponent=exponent, cutoff=cutoff, stale_value=stale_value,
                             avg_staleness=avg_staleness, convention=convention).weight(staleness)


def sorted_updates(updates: Sequence[ClientUpdate]) -> list[ClientUpdate]:
    """Sort updates by (client id, base version), so that float sums do not depend on arrival order.

    Args:
        updates: the updates, in any order.

    Returns:
        A new sorted list (the input is not modified).
    """
    return sorted(updates, key=lambda u: (u.client, u.base_version))


def least_squares_moments(trainer) -> tuple[np.ndarray, np.ndarray] | None:
    """The moments (A_k, b_k) of client k's least-squares loss, for closed-form local solves.

    F_k(w) = 1/(2n_k)‖X̃_k w − y_k‖², A_k = X̃ᵀX̃/n_k and b_k = X̃ᵀy/n_k, with X̃ = [X 1]
    (the `linear` model's layout: weights then bias). This is the (unweighted) least-squares
    problem of Lari et al. (arXiv 2409.13451, 2024).

    Args:
        trainer: the client's trainer (its runtime, features `x` and targets `y`).

    Returns:
        (A_k of shape (d, d), b_k of shape (d,)), float64; None when the model is not that
        linear regression or the client has no data.
    """
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
    """Solve argmin_w F_k(w) + ⟨linear, w⟩ + (ρ/2)‖w − anchor‖², the ADMM local step.

    Closed form (A_k + ρI)^{-1}(b_k + ρ·anchor − linear) for the linear-regression model;
    otherwise the client's local SGD (`local_steps`, `lr`) on the same objective from
    `start`, an approximation.

    Args:
        trainer: the client's trainer.
        anchor: the received global model, shape (d,).
        rho: ρ > 0, the penalty.
        linear: the linear term (ADMM's dual λ_k), shape (d,); None = 0.
        start: where the SGD fallback starts; None = `anchor`.

    Returns:
        float64 array of shape (d,).

    References:
        Boyd et al., "Distributed Optimization and Statistical Learning via the Alternating
        Direction Method of Multipliers", FnT ML 2011, §7.1 (the x-update of consensus ADMM).
    """
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
    """Mark the clients that returned an update this round (I_n^t of Wang & Ji, ICLR 2024).

    Args:
        updates: this round's updates.
        num_clients: N.

    Returns:
        Boolean array of shape (N,).

    Raises:
        ValueError: an update's client id is outside [0, N).
    """
    mask = np.zeros(num_clients, dtype=bool)
    for u in updates:
        if not 0 <= u.client < num_clients:
            raise ValueError(f"update from client {u.client}, but there are {num_clients} clients")
        mask[u.client] = True
    return mask


def replace_rows(table: np.ndarray | None, updates: Sequence[ClientUpdate], num_clients: int) -> np.ndarray:
    """Write this round's deltas into a copy of the table of each client's latest update.

    The server memory of MIFA (Gu et al., NeurIPS 2021) and FedVARP (Jhunjhunwala et al.,
    UAI 2022). The input table is not modified.

    Args:
        table: (N, d) float32 table, or None for all zeros (allocated lazily at the first update).
        updates: this round's updates (not empty).
        num_clients: N.

    Returns:
        The new (N, d) float32 table.

    Raises:
        ValueError: an update's client id is outside [0, N).
    """
    d = updates[0].delta.size
    out = np.zeros((num_clients, d), dtype=np.float32) if table is None else table.copy()
    participant_mask(updates, num_clients)  # range check
    for u in updates:
        out[u.client] = u.delta
    return out


def consensus_average(last: Mapping[int, np.ndarray], updates: Sequence[ClientUpdate],
                      memory: bool) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Consensus-ADMM server step: z = mean of the clients' messages.

    The message is the update's model (`ClientUpdate.model`). Without memory, the mean runs
    over this round's messages; with memory, over every client's last message. Callers
    handle the empty round.

    Args:
        last: client id → last received message (float32, (d,)); read only with `memory`.
        updates: this round's updates (not empty), each of kind "model".
        memory: average every client's last message instead of only this round's.

    Returns:
        (the updated `last` map — a copy, unchanged without memory — and z as float32 (d,)).

    References:
        Boyd et al., FnT ML 2011, §7.1 (the z-update of consensus ADMM); Lari et al.,
        arXiv 2409.13451 (2024), averaging of the noisy received models.
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
