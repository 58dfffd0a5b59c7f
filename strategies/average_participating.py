"""Average participating (FedAU paper baseline): plain FedAvg over the clients who showed up.

Update rule (Wang & Ji, ICLR 2024, baselines of the experiments; code IBM/fedau):
    x_{t+1} = x_t + η · (1/|S_t|) Σ_{n∈S_t} Δ_n
Every arriving update gets the same weight whatever the client's participation rate, so
with heterogeneous participation it converges to the minimiser of the participation-weighted
objective ≈ Σ p_n F_n / Σ p_n, not (1/N) Σ F_n (Wang & Ji, ICLR 2024, the problem the
paper addresses: FedAvg with fixed weights under unknown, heterogeneous participation
optimises a participation-weighted objective).
Clients run plain local SGD. Empty round: no change.

Example:
    strategy: {name: average_participating, server_lr: 1.0}

References:
    S. Wang, M. Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in
    Federated Averaging", ICLR 2024. https://arxiv.org/abs/2306.03401 (code: IBM/fedau,
    `average_participating`)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

from fedsim.scenario.fields import bounded
from fedsim.strategy.maths import apply_delta, sorted_updates, weighted_sum
from fedsim.strategy.server_opt import scaled, server_opt_field
from fedsim.types import ClientUpdate, Params, RoundInfo


@dataclass(frozen=True, kw_only=True)
class AverageParticipating:
    """Uniform average of the participants' updates.

    Args:
        server_lr: η, the server learning rate.
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None
    secure_sum: ClassVar[bool] = True  # (1/|S|) Σ Δ is the uniform weighted mean (fedsim.pipeline.secagg)
    weighting: ClassVar[Literal["uniform"]] = "uniform"

    server_lr: float = bounded(1.0, gt=0.0)
    server_opt: Any = server_opt_field()

    def init(self, params: Params, num_clients: int) -> None:
        """No server state: the rule uses only this round's updates."""
        return None

    def aggregate(self, state: None, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[None, Params]:
        """x_{t+1} = x_t + η (1/|S_t|) Σ_{n∈S_t} Δ_n; empty round: no change.

        References:
            Wang & Ji, ICLR 2024, `average_participating` baseline (code IBM/fedau).
        """
        if not updates:
            return state, params  # empty round: no change
        ups = sorted_updates(updates)
        step = weighted_sum([u.delta for u in ups], [1.0 / len(ups)] * len(ups))  # mean_{S_t} Δ_n
        return state, apply_delta(params, scaled(step, self.server_lr))
