"""Average all (FedAU paper baseline): sum of the participants' updates divided by N.

Update rule (Wang & Ji, ICLR 2024, baselines):  x_{t+1} = x_t + η · (1/N) Σ_{n∈S_t} Δ_n
Absent clients count as a zero update. With independent participation the stationary point
is exactly that of Σ p_n F_n (Wang & Ji, ICLR 2024), i.e. still biased by the participation rates. It
equals FedAU with cutoff K = 1 (tested). Clients run plain local SGD. Empty round:
no change.

Example:
    strategy: {name: average_all, server_lr: 10.0}

References:
    S. Wang, M. Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in
    Federated Averaging", ICLR 2024. https://arxiv.org/abs/2306.03401 (code: IBM/fedau,
    `average_all`)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

from fedsim.scenario.fields import bounded
from fedsim.strategy.maths import apply_delta, sorted_updates, weighted_sum
from fedsim.strategy.server_opt import scaled, server_opt_field
from fedsim.types import ClientUpdate, Params, RoundInfo


@dataclass(frozen=True, kw_only=True)
class AverageAll:
    """Participants' updates summed and divided by the total number of clients.

    Args:
        server_lr: η, the server learning rate (the paper's grid picks a large one, e.g. 10).
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None

    server_lr: float = bounded(1.0, gt=0.0)
    server_opt: Any = server_opt_field()

    def init(self, params: Params, num_clients: int) -> int:
        return num_clients  # N, fixed for the run

    def aggregate(self, state: int, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[int, Params]:
        if not updates:
            return state, params  # empty round: no change
        ups = sorted_updates(updates)
        step = weighted_sum([u.delta for u in ups], [1.0 / state] * len(ups))  # (1/N) Σ_{S_t} Δ_n
        return state, apply_delta(params, scaled(step, self.server_lr))
