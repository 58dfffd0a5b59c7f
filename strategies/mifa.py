"""MIFA (Gu et al., NeurIPS 2021) as in the FedAU code: average of every client's latest update.

Update rule (Gu et al., NeurIPS 2021; as in FedAU's code):  y_n ← Δ_n for n ∈ S_t (y_n = 0 before n's first update);
                           x_{t+1} = x_t + η · (1/N) Σ_{all n} y_n
Absent clients contribute their last (stale) update, so every client weighs 1/N whatever
its participation rate. The step is applied every round, also when nobody participates
(the stored updates are reused), exactly as the reference code does.
Clients run plain local SGD.

Memory: the server stores one float32 vector per client, an (N, d) array = 4·N·d bytes
(e.g. 250 clients × 1M parameters = 1 GB), allocated at the first update; each round
copies it once (the state is never modified in place). FedAU needs three scalars per client.

Example:
    strategy: {name: mifa, server_lr: 1.0}

References:
    X. Gu, K. Huang, J. Zhang, L. Huang, "Fast Federated Learning in the Presence of
    Arbitrary Device Unavailability", NeurIPS 2021. https://arxiv.org/abs/2106.04159
    Baseline as implemented in IBM/fedau (Wang & Ji, ICLR 2024).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from fedsim.scenario.fields import bounded
from fedsim.strategy.maths import apply_delta, replace_rows
from fedsim.strategy.server_opt import scaled, server_opt_field
from fedsim.types import ClientUpdate, Params, RoundInfo


@dataclass(frozen=True)
class MifaState:
    num_clients: int
    latest: np.ndarray | None = None  # (N, d) float32: y_n, None while all zero


@dataclass(frozen=True, kw_only=True)
class Mifa:
    """Memory-augmented averaging of the latest update of every client.

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

    def init(self, params: Params, num_clients: int) -> MifaState:
        return MifaState(num_clients)

    def aggregate(self, state: MifaState, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[MifaState, Params]:
        latest = replace_rows(state.latest, updates, state.num_clients) if updates else state.latest
        if latest is None:
            return state, params  # nothing stored yet: the mean of zeros is a zero step
        step = latest.mean(axis=0, dtype=np.float64)  # (1/N) Σ_all y_n, also in empty rounds
        return MifaState(state.num_clients, latest), apply_delta(params, scaled(step, self.server_lr))
