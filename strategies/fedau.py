"""FedAU (Wang & Ji, ICLR 2024): aggregation weights estimated online from participation intervals.

Update rule (Wang & Ji, ICLR 2024, Algorithm 1, and the authors' code). Per client n the
server keeps three scalars: c_n (rounds since the last recorded interval), Σ_n (sum of
recorded intervals) and M_n (how many). In round t,
with S_t the clients whose update arrived:

    ω_n = Σ_n / M_n   if M_n > 0, else 1          (read BEFORE this round's interval is recorded)
    x_{t+1} = x_t + η · (1/N) · Σ_{n∈S_t} ω_n Δ_n   (N = all clients, not |S_t|)
    n ∈ S_t:  Σ_n += c_n + 1, M_n += 1, c_n ← 0
    n ∉ S_t:  c_n += 1; if c_n ≥ K: Σ_n += K, M_n += 1, c_n ← 0

The mean interval estimates 1/p_n (Kac's lemma) without the server ever knowing p_n or the
participation process; under Bernoulli(p) E[ω] → (1 − (1−p)^K)/p, so K = ∞ (the default
100000) targets the unweighted objective (1/N) Σ_n F_n and K = 1 gives ω ≡ 1 (`average_all`).
Clients run plain local SGD. Empty round: the model is unchanged, the counters advance.
A client that drops mid-round counts as not participating (as in the authors' code). Memory: three
scalars per client.

Example:
    strategy: {name: fedau, server_lr: 1.0, cutoff: 50}

References:
    S. Wang, M. Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in
    Federated Averaging", ICLR 2024. https://arxiv.org/abs/2306.03401 (code: IBM/fedau)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from fedsim.scenario.fields import bounded
from fedsim.strategy.maths import (
    apply_delta,
    participant_mask,
    sorted_updates,
    weighted_sum,
)
from fedsim.strategy.server_opt import scaled, server_opt_field
from fedsim.types import ClientUpdate, Params, RoundInfo


@dataclass(frozen=True)
class FedAUState:
    """Interval records per client (Wang & Ji, ICLR 2024): all int64/float64 arrays of length N."""

    count: np.ndarray  # c_n
    total: np.ndarray  # Σ_n
    records: np.ndarray  # M_n


def interval_weights(state: FedAUState) -> np.ndarray:
    """ω_n = Σ_n / M_n, or 1 before the first recorded interval (Wang & Ji, ICLR 2024, Alg. 1)."""
    return np.where(state.records > 0, state.total / np.maximum(state.records, 1), 1.0)


@dataclass(frozen=True, kw_only=True)
class FedAU:
    """Federated averaging with adaptive (interval-based) aggregation weights.

    Args:
        server_lr: η, the server learning rate.
        cutoff: K, the longest interval recorded; a client absent for K rounds records K.
            100000 stands for K = ∞ (the code's default).
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None

    server_lr: float = bounded(1.0, gt=0.0)
    cutoff: int = bounded(100_000, ge=1, le=10**12)
    server_opt: Any = server_opt_field()

    def init(self, params: Params, num_clients: int) -> FedAUState:
        z = np.zeros(num_clients, dtype=np.int64)
        return FedAUState(z, np.zeros(num_clients, dtype=np.float64), z.copy())

    def aggregate(self, state: FedAUState, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[FedAUState, Params]:
        n = len(state.count)
        ups = sorted_updates(updates)
        omega = interval_weights(state)  # Algorithm 1: intervals completed before round t only
        if ups:
            w = [omega[u.client] / n for u in ups]  # ω_n / N
            params = apply_delta(params, scaled(weighted_sum([u.delta for u in ups], w), self.server_lr))  # step 4
        part = participant_mask(ups, n)
        # Algorithm 1: participants record c_n + 1; the others count on and record K at the cutoff
        total = state.total + np.where(part, state.count + 1, 0)
        records = state.records + part
        count = np.where(part, 0, state.count + 1)
        hit = ~part & (count >= self.cutoff)
        total = total + np.where(hit, count, 0)
        records = records + hit
        count = np.where(hit, 0, count)
        return FedAUState(count, total, records), params

    def client_report(self, state: FedAUState) -> dict[int, dict[str, Any]]:
        """Each client's current weight estimate ω_n (≈ 1/p_n) and number of recorded intervals."""
        w = interval_weights(state)
        return {k: {"fedau_weight": float(w[k]), "fedau_intervals": int(state.records[k])}
                for k in range(len(w))}
