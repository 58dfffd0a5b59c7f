"""FedAvg (McMahan et al., AISTATS 2017) with a server learning rate.

Update rule (McMahan et al., AISTATS 2017, the FederatedAveraging algorithm, with a server
learning rate η):  x_{t+1} = x_t + η · Σ_{i∈S_t} a_i Δ_i
with a_i = n_i / Σ_j n_j (`weighting: examples`) or a_i = 1/|S_t| (`weighting: uniform`).
Clients run plain local SGD (fedsim.training.runtime). Empty round: no change.

Sync mode only. For asynchronous runs use `async_fedavg` (every arrival applied at once, with
mixing weight and staleness decay), `fedbuff` or `fedfix`.

Example:
    strategy: {name: fedavg, server_lr: 1.0, weighting: examples}

References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017. https://arxiv.org/abs/1602.05629
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

from fedsim.scenario.fields import bounded
from fedsim.strategy.maths import (
    apply_delta,
    averaged_delta,
)
from fedsim.strategy.server_opt import scaled, server_opt_field
from fedsim.types import ClientUpdate, Params, RoundInfo


@dataclass(frozen=True, kw_only=True)
class FedAvg:
    """Federated averaging.

    Args:
        server_lr: η, the server learning rate (1.0 = classic FedAvg).
        weighting: `examples` (a_i ∝ n_i) or `uniform` (a_i = 1/|S_t|).
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None
    secure_sum: ClassVar[bool] = True  # x + η·(weighted mean): fedsim.pipeline.secagg can feed it the sum

    server_lr: float = bounded(1.0, gt=0.0, le=1e6)
    weighting: Literal["examples", "uniform"] = "examples"
    server_opt: Any = server_opt_field()

    def init(self, params: Params, num_clients: int) -> None:
        """No server state: FedAvg's rule needs only the model and this round's updates."""
        return None  # FedAvg keeps no server state

    def aggregate(self, state: None, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[None, Params]:
        """x_{t+1} = x_t + η Σ_{i∈S_t} a_i Δ_i, updates summed in client order; empty round: no change.

        References:
            McMahan et al., AISTATS 2017, FederatedAveraging (server step).
        """
        if not updates:
            return state, params  # empty round: model unchanged
        step = averaged_delta(updates, self.weighting)  # Σ a_i Δ_i
        return state, apply_delta(params, scaled(step, self.server_lr))  # x + η Σ a_i Δ_i
