"""Known participation probability (FedAU paper's oracle baseline): weights 1/p_n.

Update rule (Wang & Ji, ICLR 2024, baselines):  x_{t+1} = x_t + η · (1/N) Σ_{n∈S_t} Δ_n / p_n
With Bernoulli participation E[I_n/p_n] = 1, so the update is an unbiased estimate of the
full-participation step and the method targets (1/N) Σ_n F_n. It needs the true p_n, which a
real server does not have: this is an *oracle* (`uses_oracle = True`; the engine passes
`Oracle.participation_probs`). Processes without fixed per-client probabilities (traces)
are rejected at start. Clients run plain local SGD. Empty round: no change.

Example:
    strategy: {name: known_probability}

References:
    S. Wang, M. Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in
    Federated Averaging", ICLR 2024. https://arxiv.org/abs/2306.03401 (code: IBM/fedau,
    `known_prob`)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from fedsim.scenario.fields import bounded
from fedsim.strategy.maths import apply_delta, sorted_updates, weighted_sum
from fedsim.strategy.server_opt import scaled, server_opt_field
from fedsim.types import ClientUpdate, Oracle, Params, RoundInfo


@dataclass(frozen=True, kw_only=True)
class KnownProbability:
    """Oracle inverse-probability weighting.

    Args:
        server_lr: η, the server learning rate.
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = True
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None

    server_lr: float = bounded(1.0, gt=0.0)
    server_opt: Any = server_opt_field()

    def init(self, params: Params, num_clients: int, oracle: Oracle | None = None) -> np.ndarray:
        probs = None if oracle is None else oracle.participation_probs
        if probs is None:
            raise ValueError("known_probability needs the participation process's per-client probabilities "
                             "p_n, and this process has none (e.g. a trace); use bernoulli, markov, cyclic, "
                             "uniform or full participation")
        p = np.asarray(probs, dtype=np.float64)
        if p.shape != (num_clients,):
            raise ValueError(f"known_probability: {p.size} participation probabilities for {num_clients} clients")
        bad = np.flatnonzero(~(p > 0) | ~np.isfinite(p))
        if bad.size:
            raise ValueError(f"known_probability: client {int(bad[0])} has participation probability "
                             f"{p[bad[0]]!r}; 1/p_n needs p_n > 0")
        return 1.0 / (num_clients * p)  # 1/(N p_n), fixed for the run

    def aggregate(self, state: np.ndarray, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[np.ndarray, Params]:
        if not updates:
            return state, params  # empty round: no change
        ups = sorted_updates(updates)
        step = weighted_sum([u.delta for u in ups], [state[u.client] for u in ups])  # (1/N) Σ Δ_n/p_n
        return state, apply_delta(params, scaled(step, self.server_lr))

    def client_report(self, state: np.ndarray) -> dict[int, dict[str, Any]]:
        """The oracle weight 1/p_n (comparable with FedAU's `fedau_weight`)."""
        n = len(state)
        return {k: {"known_weight": float(state[k] * n)} for k in range(n)}
