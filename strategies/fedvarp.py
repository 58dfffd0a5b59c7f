"""FedVARP (Jhunjhunwala et al., UAI 2022) as in the FedAU code: SAGA-style variance reduction.

Update rule (Jhunjhunwala et al., UAI 2022; as in FedAU's code), with y_n the latest stored
update of client n (init 0) and
ȳ = (1/N) Σ_n y_n taken BEFORE this round's replacements:

    x_{t+1} = x_t + η · [ (1/|S_t|) Σ_{n∈S_t} (Δ_n − y_n) + ȳ ];   then y_n ← Δ_n for n ∈ S_t.

Empty round: the model is unchanged (the reference code skips the ȳ term too) and nothing is
stored. Clients run plain local SGD.

Memory: an (N, d) float32 table of stored updates = 4·N·d bytes, allocated at the first
update and copied once per non-empty round (the state is never modified in place).

Example:
    strategy: {name: fedvarp, server_lr: 1.0}

References:
    D. Jhunjhunwala, P. Sharma, A. Nagarkatti, G. Joshi, "FedVARP: Tackling the Variance Due
    to Partial Client Participation in Federated Learning", UAI 2022.
    https://arxiv.org/abs/2207.14130 — baseline as implemented in IBM/fedau.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from fedsim.scenario.fields import bounded
from fedsim.strategy.maths import (
    apply_delta,
    replace_rows,
    sorted_updates,
    weighted_sum,
)
from fedsim.strategy.server_opt import scaled, server_opt_field
from fedsim.types import ClientUpdate, Params, RoundInfo


@dataclass(frozen=True)
class FedVarpState:
    num_clients: int
    latest: np.ndarray | None = None  # (N, d) float32: y_n, None while all zero


@dataclass(frozen=True, kw_only=True)
class FedVarp:
    """Variance-reduced partial participation with one stored update per client.

    Args:
        server_lr: η, the server learning rate.
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None

    server_lr: float = bounded(1.0, gt=0.0)
    server_opt: Any = server_opt_field()

    def init(self, params: Params, num_clients: int) -> FedVarpState:
        return FedVarpState(num_clients)

    def aggregate(self, state: FedVarpState, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[FedVarpState, Params]:
        if not updates:
            return state, params  # empty round: nothing added, nothing stored
        ups = sorted_updates(updates)
        old = state.latest
        if old is None:
            ybar = np.zeros(params.size, dtype=np.float64)
            corrected = [u.delta for u in ups]
        else:
            ybar = old.mean(axis=0, dtype=np.float64)  # ȳ before the replacements
            corrected = [u.delta.astype(np.float64) - old[u.client] for u in ups]  # Δ_n − y_n
        step = weighted_sum(corrected, [1.0 / len(ups)] * len(ups)) + ybar
        latest = replace_rows(old, ups, state.num_clients)  # y_n ← Δ_n
        return FedVarpState(state.num_clients, latest), apply_delta(params, scaled(step, self.server_lr))
