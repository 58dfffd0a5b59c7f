"""FedFix (Fraboni et al., JMLR 2023): commit at fixed virtual intervals Δt.

Update rule (Fraboni et al., JMLR 2023, the FedFix scheme; official code FL/server.py): the
server keeps Σ d_i Δ_i over the updates that arrive in ((n)Δt, (n+1)Δt] and at every tick
(n+1)Δt commits
    x ← x + η Σ_{i arrived} d_i Δ_i
whatever has arrived, even nothing (an empty tick is a no-op step that still counts as a
server version, as in that code). Weights:
    `weight`:    d_i = ⌈τ_i/Δt⌉ · P_i   — client i contributes every ⌈τ_i/Δt⌉ ticks, so
                 E[ω_i] ∝ P_i and the surrogate objective is the true one (Fraboni et al.'s
                 main theorem: the limit weighs client i by q_i ∝ E[ω_i]);
    `identical`: d_i = P_i             — surrogate q_i ∝ P_i/⌈τ_i/Δt⌉, biased to fast clients.
P_i = 1/N (`importance: uniform`) or n_i/Σn (`examples`); τ_i is the client's expected job
duration, which the server does not know in a real deployment: `weight` and `examples` read
it from the simulator's Oracle (`uses_oracle`). No staleness discount (Fraboni's code).
Intended with `engine: {mode: async, redispatch: on_commit}` and concurrency ≥ N, where a
client that finished idles until the next tick and restarts from the new model there.

Args:
    commit_interval: Δt in virtual seconds.
    server_lr: η (1 in the paper).
    weighting: `weight` (the paper's d_i = ⌈τ_i/Δt⌉ P_i) or `identical` (d_i = P_i).
    importance: P_i, `uniform` (the paper) or `examples`.

Example:
    strategy: {name: fedfix, commit_interval: 0.5, weighting: weight}

References:
    Fraboni, Vidal, Kameni, Lorenzi, "A General Theory for Federated Optimization with
    Asynchronous and Heterogeneous Clients Updates", JMLR 2023. https://arxiv.org/abs/2206.10189
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from fedsim.scenario.fields import bounded
from fedsim.strategy.maths import apply_delta
from fedsim.strategy.server_opt import scaled, server_opt_field
from fedsim.types import ArrivalInfo, ClientUpdate, Oracle, Params


@dataclass(frozen=True)
class FedFixState:
    """Server state: the weights d_i, the periods ⌈τ_i/Δt⌉ and the buffer of the current tick."""
    weights: np.ndarray  # d_i
    periods: np.ndarray  # ⌈τ_i/Δt⌉ (ones for `identical` without an oracle)
    buffer: np.ndarray  # Σ d_i Δ_i since the last tick (float64)
    count: int  # updates in the buffer


def importance(kind: str, num_clients: int, oracle: Oracle | None) -> np.ndarray:
    """P_i: uniform 1/N, or n_i/Σn from the oracle."""
    if kind == "uniform":
        return np.full(num_clients, 1.0 / num_clients)
    if oracle is None:
        raise ValueError("importance 'examples' needs the clients' example counts (oracle)")
    n = np.asarray(oracle.num_examples, dtype=np.float64)
    return n / n.sum()


@dataclass(frozen=True, kw_only=True)
class FedFix:
    """Commit every Δt of virtual time with weights d_i = ⌈τ_i/Δt⌉ P_i (or identical)."""

    modes: ClassVar[tuple[str, ...]] = ("async",)
    # uses_oracle is a property below: it depends on the weighting
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None

    commit_interval: float = bounded(1.0, gt=0.0, le=1e12)
    server_lr: float = bounded(1.0, gt=0.0, le=1e6)
    weighting: Literal["weight", "identical"] = "weight"
    importance: Literal["uniform", "examples"] = "uniform"
    server_opt: Any = server_opt_field()

    @property
    def uses_oracle(self) -> bool:
        """True for the weightings that need the clients' mean durations (a simulator-only baseline)."""
        return self.weighting == "weight" or self.importance == "examples"

    def init(self, params: Params, num_clients: int, oracle: Oracle | None = None) -> FedFixState:
        """Fix the weights d_i = ⌈τ_i/Δt⌉·P_i (or equal weights for `identical`), Fraboni et al., JMLR 2023."""
        p = importance(self.importance, num_clients, oracle)
        if self.weighting == "weight":
            if oracle is None:
                raise ValueError("fedfix weighting 'weight' needs the clients' mean durations (oracle)")
            tau = np.asarray(oracle.mean_durations, dtype=np.float64)
            # m_i = ⌈τ_i/Δt⌉ with the paper's own float arithmetic (Fraboni et al.'s code: np.ceil(tau_i /
            # delta_t)), no slack: with F-80, M = 20, Δt = 0.2 the fastest τ = 0.20000000000000007 gives m = 2, as there
            periods = np.ceil(tau / self.commit_interval)
        else:
            periods = np.ones(num_clients)
        return FedFixState(periods * p, periods, np.zeros(params.size), 0)

    def receive(self, state: FedFixState, params: Params, update: ClientUpdate,
                info: ArrivalInfo) -> tuple[FedFixState, None]:
        """Buffer d_i Δ_i until the next tick; arrivals never commit by themselves."""
        d = state.weights[update.client]
        buffer = state.buffer + d * update.delta.astype(np.float64)  # Σ d_i (θ_i − sent_i), Fraboni et al.
        return dataclasses.replace(state, buffer=buffer, count=state.count + 1), None

    def tick(self, state: FedFixState, params: Params, info: ArrivalInfo) -> tuple[FedFixState, Params]:
        """Commit the buffer at the tick: θ ← θ + η Σ d_i Δ_i (an empty tick changes nothing)."""
        new = apply_delta(params, scaled(state.buffer, self.server_lr))  # θ ← θ + η Σ d_i Δ_i; empty: no-op
        return dataclasses.replace(state, buffer=np.zeros_like(state.buffer), count=0), new

    def client_report(self, state: FedFixState) -> dict[int, dict[str, float]]:
        """Per-client weight d_i, logged in clients.jsonl."""
        return {k: {"weight": float(w)} for k, w in enumerate(state.weights)}
