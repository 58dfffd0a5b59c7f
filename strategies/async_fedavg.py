"""Asynchronous FedAvg / FedAsync: every arrival is applied at once (one version per update).

Update rule, for an update Δ_i = x_i − x_start with staleness τ (Fraboni et al., JMLR 2023;
Xie et al. 2019, FedAsync):
    α_t = α · s(τ) · d_i
    `rule: delta` (Fraboni's asynchronous FedAvg; FedAsync in delta form):
        x ← x + α_t Δ_i
    `rule: mix` (Xie et al.'s FedAsync):  x ← (1 − α_t) x + α_t (x_start + Δ_i)
Weights d_i: `identical` (1) — the surrogate objective is then weighted ∝ 1/τ_i, biased to
fast clients (Fraboni et al.); or `weight`: d_i = P_i τ_i Σ_j 1/τ_j, which makes E[ω_i] = P_i
(the true objective) when every client restarts as soon as it is aggregated; τ_i are the
clients' expected job durations, read from the simulator's Oracle (`uses_oracle`).
Staleness decay s(τ): constant, polynomial (1+τ)^−a, or hinge (1 up to `staleness_cutoff`
= b, then 1/(1 + a(τ − b))) — fedsim.strategy.staleness_weight.

Args:
    alpha: α, the mixing weight / server learning rate (1 = Fraboni's asynchronous FedAvg).
    rule: `delta` or `mix` (see above).
    weighting: `identical` or `weight` (see above).
    importance: P_i for `weight`: `uniform` (1/N, the paper) or `examples` (n_i/Σn, oracle).
    staleness: constant | polynomial | hinge.  staleness_exponent: a.  staleness_cutoff: b.

Example:
    strategy: {name: async_fedavg, alpha: 0.6, rule: mix, staleness: polynomial}

References:
    Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", 2019.
    https://arxiv.org/abs/1903.03934
    Fraboni, Vidal, Kameni, Lorenzi, "A General Theory for Federated Optimization with
    Asynchronous and Heterogeneous Clients Updates", JMLR 2023. https://arxiv.org/abs/2206.10189
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from fedsim.scenario.fields import bounded
from fedsim.strategy.maths import apply_delta
from fedsim.strategy.server_opt import StalenessDiscount, scaled, server_opt_field
from fedsim.types import ArrivalInfo, ClientUpdate, Oracle, Params


@dataclass(frozen=True)
class AsyncFedAvgState:
    """Server state: the per-client aggregation weights d_i."""
    weights: np.ndarray  # d_i


@dataclass(frozen=True, kw_only=True)
class AsyncFedAvg:
    """Asynchronous FedAvg / FedAsync: every arrival is a new version (mixing α, staleness decay)."""

    modes: ClassVar[tuple[str, ...]] = ("async",)
    # uses_oracle is a property below: it depends on the weighting
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None

    alpha: float = bounded(1.0, gt=0.0, le=1e6)
    rule: Literal["delta", "mix"] = "delta"
    weighting: Literal["identical", "weight"] = "identical"
    importance: Literal["uniform", "examples"] = "uniform"
    staleness: Literal["constant", "polynomial", "hinge"] = "constant"
    staleness_exponent: float = bounded(0.5, ge=0.0, le=100.0)
    staleness_cutoff: int = bounded(0, ge=0, le=1_000_000_000)
    server_opt: Any = server_opt_field()

    @property
    def uses_oracle(self) -> bool:
        """True for the weightings that need the clients' mean durations (a simulator-only baseline)."""
        return self.weighting == "weight"

    def init(self, params: Params, num_clients: int, oracle: Oracle | None = None) -> AsyncFedAvgState:
        """Fix each client's weight d_i (from the oracle's mean durations for the `weight` variants)."""
        if self.weighting == "identical":
            return AsyncFedAvgState(np.ones(num_clients))
        if oracle is None:
            raise ValueError("async_fedavg weighting 'weight' needs the clients' mean durations (oracle)")
        tau = np.asarray(oracle.mean_durations, dtype=np.float64)
        if self.importance == "uniform":
            p = np.full(num_clients, 1.0 / num_clients)
        else:
            n = np.asarray(oracle.num_examples, dtype=np.float64)
            p = n / n.sum()
        return AsyncFedAvgState(p * tau * np.sum(1.0 / tau))  # d_i = P_i τ_i Σ_j 1/τ_j  (Fraboni et al.)

    def receive(self, state: AsyncFedAvgState, params: Params, update: ClientUpdate,
                info: ArrivalInfo) -> tuple[AsyncFedAvgState, Params]:
        """Apply one arrival at once: every update is a new server version (FedAsync-style mixing)."""
        s = StalenessDiscount(kind=self.staleness, exponent=self.staleness_exponent,
                              cutoff=self.staleness_cutoff).weight(info.staleness)
        a = self.alpha * s * float(state.weights[update.client])  # α_t
        if self.rule == "delta":
            return state, apply_delta(params, scaled(update.delta.astype(np.float64), a))  # x + α_t Δ
        if info.base_params is None:
            raise ValueError("async_fedavg rule 'mix' needs the start model of the update (ArrivalInfo.base_params)")
        local = info.base_params.astype(np.float64) + update.delta  # x_start + Δ = the client's model
        new = (1.0 - a) * params.astype(np.float64) + a * local  # FedAsync mixing
        return state, new.astype(np.float32)

    def client_report(self, state: AsyncFedAvgState) -> dict[int, dict[str, float]]:
        """Per-client weight d_i, logged in clients.jsonl."""
        return {k: {"weight": float(w)} for k, w in enumerate(state.weights)}
