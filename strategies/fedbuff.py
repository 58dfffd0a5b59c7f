"""FedBuff (Nguyen et al., AISTATS 2022): buffered asynchronous aggregation.

Update rule (Nguyen et al., AISTATS 2022, Algorithm 1; FLSim's FedBuff aggregator), per
arrival of Δ_i with staleness τ = v − v_start:
    drop it if τ > max_staleness (FLSim's `max_staleness`), or if `one_per_client` and
    client i is already in the buffer (a client contributes once per buffer, as Nguyen et al.
    note);
    w = e_i · s(τ);   B ← B + w Δ_i;   k ← k + 1
    when k = K:  g = B (`buffer_reduction: sum`, FLSim's WEIGHTED_SUM) or B / Σ e (`mean`,
    the paper's average);  m ← μ m + g;  x ← x + η m;  B ← 0, k ← 0   (one new server version)
Example weight e_i: `equal` (1), `examples` (n_i), or `fraboni`: d_i = P_i / f̂_i with
P_i = 1/N and f̂_i the running fraction of server steps that contain client i (Fraboni
et al., JMLR 2023, FedBuff-c with the "weight" aggregation weights d_i = P_i/f_i, estimated
online instead of from the precomputed schedule as their code does). Fraboni's step is
θ ← θ + η Σ d_i Δ_i with no division, so `fraboni` needs `buffer_reduction: sum`: the mean
B / Σ d would cancel the d_i (it is refused at validation). Staleness weight s(τ):
fedsim.strategy.server_opt.StalenessDiscount.
Sign: fedsim's Δ = local − start, so the server moves along +Δ (FLSim uses start − local as a
gradient). A partially filled buffer is not flushed at the end of a run.

Invariants (FLSim's FedBuff tests): K = 1, μ = 0 is FedAsync with the delta rule
(`async_fedavg`); K = N, no staleness, `sum` with η/K (or `mean` with η) is one round of
sync FedAvg.

Args:
    buffer_size: K, updates per server step.
    server_lr: η.  server_momentum: μ (0 = plain SGD step; FedAvgM when > 0).
    buffer_reduction: `mean` (divide by Σ e) or `sum` (FLSim's default).
    weighting: `equal`, `examples` or `fraboni` (see above; `fraboni` needs `sum`).
    staleness: constant | polynomial | hinge | threshold (see StalenessDiscount).
    staleness_exponent: a in ((1+τ̄)/(1+τ))^a (0.5 = the paper's 1/√(1+τ)); slope of `hinge`.
    staleness_cutoff: τ up to which `hinge`/`threshold` do not discount.
    stale_value: weight of updates past the cutoff for `threshold`.
    avg_staleness: τ̄, the staleness that weighs 1 (s(τ̄) = 1). Unset: 0 under the `fedsim`
        convention (the paper's 1/√(1+τ)), 1 under `flsim` (FLSim's default).
    staleness_convention: `fedsim` (the default: only `polynomial` is normalised by τ̄, so
        setting avg_staleness with another kind is refused) or `flsim` (FLSim's
        StalenessWeight: every kind is divided by its value at τ̄, default τ̄ = 1).
    max_staleness: discard updates staler than this (unset = keep all).
    one_per_client: a client contributes at most once per buffer (later ones are discarded).

Example:
    strategy: {name: fedbuff, buffer_size: 10, server_lr: 1.0, staleness: polynomial}

References:
    Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022.
    https://arxiv.org/abs/2106.06639
    Fraboni, Vidal, Kameni, Lorenzi, "A General Theory for Federated Optimization with
    Asynchronous and Heterogeneous Clients Updates", JMLR 2023. https://arxiv.org/abs/2206.10189
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from fedsim.errors import ConfigError
from fedsim.scenario.fields import bounded
from fedsim.strategy.maths import apply_delta
from fedsim.strategy.server_opt import (
    StalenessDiscount,
    TraceState,
    legacy,
    server_opt_field,
)
from fedsim.types import ArrivalInfo, ClientUpdate, Params


@dataclass(frozen=True)
class FedBuffState:
    """Server state: the buffer being filled, the momentum and the per-client step counts."""
    buffer: np.ndarray  # B = Σ w Δ (float64)
    count: int  # k
    example_sum: float  # Σ e over the buffer
    members: frozenset[int]  # clients in the buffer
    momentum: np.ndarray | None  # m
    steps: int  # server steps taken so far
    contributions: np.ndarray  # per client: server steps it took part in (for `fraboni`)
    discarded: int  # updates dropped for staleness or one_per_client


@dataclass(frozen=True, kw_only=True)
class FedBuff:
    """Buffered async aggregation: a server step every K arrivals, with staleness weights."""

    modes: ClassVar[tuple[str, ...]] = ("async",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None

    buffer_size: int = bounded(10, ge=1, le=1_000_000)
    server_lr: float = bounded(1.0, gt=0.0, le=1e6)
    server_momentum: float = bounded(0.0, ge=0.0, lt=1.0)
    buffer_reduction: Literal["mean", "sum"] = "mean"
    weighting: Literal["equal", "examples", "fraboni"] = "equal"
    staleness: Literal["constant", "polynomial", "hinge", "threshold"] = "constant"
    staleness_exponent: float = bounded(0.5, ge=0.0, le=100.0)
    staleness_cutoff: int = bounded(0, ge=0, le=1_000_000_000)
    stale_value: float = bounded(0.0, ge=0.0, le=1.0)
    avg_staleness: float | None = bounded(None, ge=0.0, le=1e9)
    staleness_convention: Literal["fedsim", "flsim"] = "fedsim"
    max_staleness: int | None = bounded(None, ge=0, le=1_000_000_000)
    one_per_client: bool = False
    server_opt: Any = server_opt_field()

    def validate(self) -> None:
        """Refuse `weighting: fraboni` with `buffer_reduction: mean`.

        Raises:
            ConfigError: naming `buffer_reduction`, when the mean would cancel Fraboni's d_i.
        """
        if self.weighting == "fraboni" and self.buffer_reduction != "sum":
            raise ConfigError("buffer_reduction", "weighting 'fraboni' needs buffer_reduction: sum (Fraboni et al.'s "
                              "step θ + η Σ d_i Δ_i has no division; the mean would cancel the d_i)")
        if self.staleness_convention == "fedsim" and self.avg_staleness is not None \
                and self.staleness != "polynomial":
            raise ConfigError("avg_staleness", f"staleness {self.staleness!r} is not normalised under "
                              "staleness_convention: fedsim; unset it, or set staleness_convention: flsim "
                              "(FLSim divides every kind by its value at avg_staleness)")
        if self.staleness_convention == "flsim" and self._discount().raw(
                1.0 if self.avg_staleness is None else self.avg_staleness) == 0.0:
            raise ConfigError("stale_value", "is 0 at avg_staleness, which staleness_convention: flsim divides by; "
                              "raise stale_value or lower avg_staleness to at most staleness_cutoff")

    def _discount(self) -> StalenessDiscount:
        return StalenessDiscount(kind=self.staleness, exponent=self.staleness_exponent, cutoff=self.staleness_cutoff,
                                 stale_value=self.stale_value, avg_staleness=self.avg_staleness,
                                 convention=self.staleness_convention)

    def check_clients(self, num_clients: int) -> list[str]:
        """Problems with `num_clients` registered clients, found before any data is built."""
        if self.one_per_client and self.buffer_size > num_clients:
            return [f"buffer_size: {self.buffer_size} is larger than data.num_clients ({num_clients}) with "
                    "one_per_client: the buffer could never fill"]
        return []

    def init(self, params: Params, num_clients: int) -> FedBuffState:
        """An empty buffer (refuses a one_per_client buffer larger than the federation)."""
        self.validate()
        problems = self.check_clients(num_clients)
        if problems:
            raise ValueError(problems[0])
        return FedBuffState(np.zeros(params.size), 0, 0.0, frozenset(), None, 0,
                            np.zeros(num_clients, dtype=np.int64), 0)

    def _example_weight(self, state: FedBuffState, update: ClientUpdate, num_clients: int) -> float:
        if self.weighting == "equal":
            return 1.0
        if self.weighting == "examples":
            return float(update.num_examples)
        # fraboni: d_i = P_i / f̂_i, f̂_i = (steps with i, counting this one) / (steps + 1)  (Fraboni et al.)
        freq = (state.contributions[update.client] + 1) / (state.steps + 1)
        return (1.0 / num_clients) / freq

    def receive(self, state: FedBuffState, params: Params, update: ClientUpdate,
                info: ArrivalInfo) -> tuple[FedBuffState, Params | None]:
        """Buffer one weighted arrival; every K-th takes a server step (Nguyen et al., AISTATS 2022, Alg. 1)."""
        if self.max_staleness is not None and info.staleness > self.max_staleness:  # FLSim's max_staleness
            return dataclasses.replace(state, discarded=state.discarded + 1), None
        if self.one_per_client and update.client in state.members:  # Nguyen et al., AISTATS 2022
            return dataclasses.replace(state, discarded=state.discarded + 1), None
        e = self._example_weight(state, update, info.num_clients)
        s = self._discount().weight(info.staleness)
        buffer = state.buffer + (e * s) * update.delta.astype(np.float64)  # B ← B + w Δ  (step 3)
        count, esum = state.count + 1, state.example_sum + e
        members = state.members | {update.client}
        if count < self.buffer_size:
            return dataclasses.replace(state, buffer=buffer, count=count, example_sum=esum,
                                       members=members), None
        g = buffer if self.buffer_reduction == "sum" else buffer / esum  # step 4
        heavy = self.server_momentum > 0
        opt = legacy(self.server_lr, self.server_momentum)  # m ← μ m + g;  step = η m
        step, trace = opt.update(g, TraceState(state.momentum) if heavy else (), params)
        contributions = state.contributions.copy()
        contributions[sorted(members)] += 1
        new = apply_delta(params, step)  # x ← x + η m
        return FedBuffState(np.zeros_like(buffer), 0, 0.0, frozenset(),
                            trace.m if heavy else None, state.steps + 1, contributions,
                            state.discarded), new

    def client_report(self, state: FedBuffState) -> dict[int, dict[str, float]]:
        """Per client: the number of server steps it contributed to, logged in clients.jsonl."""
        return {k: {"server_steps": int(c)} for k, c in enumerate(state.contributions)}
