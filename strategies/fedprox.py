"""FedProx (Li et al., MLSys 2020): local SGD on a proximally regularised objective.

Update rule (Li et al., MLSys 2020, the FedProx algorithm; server as FedAvg, McMahan et al.,
AISTATS 2017):
    client:  min_w F_i(w) + (μ/2)‖w − w_t‖², run as `local_steps` SGD steps from w_t whose
             gradient is ∇ℓ(w; ξ) + μ(w − w_t);
    server:  x_{t+1} = x_t + η · Σ_{i∈S_t} a_i Δ_i  (FedAvg's rule and weights).
With μ = 0 this is exactly FedAvg. Empty round: no change.

Example:
    strategy: {name: fedprox, mu: 0.01}

References:
    Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in Heterogeneous
    Networks", MLSys 2020. https://arxiv.org/abs/1812.06127
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
from fedsim.types import ClientTask, ClientUpdate, Params, RoundInfo


@dataclass(frozen=True, kw_only=True)
class FedProx:
    """FedAvg with a proximal term on the client.

    Args:
        mu: μ, weight of the proximal term (μ/2)‖w − w_t‖².
        server_lr: η, the server learning rate.
        weighting: `examples` (a_i ∝ n_i) or `uniform` (a_i = 1/|S_t|).
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None
    secure_sum: ClassVar[bool] = True  # x + η·(weighted mean): fedsim.pipeline.secagg can feed it the sum

    mu: float = bounded(0.01, ge=0.0)
    server_lr: float = bounded(1.0, gt=0.0)
    weighting: Literal["examples", "uniform"] = "examples"
    server_opt: Any = server_opt_field()

    def init(self, params: Params, num_clients: int) -> None:
        """No server state: the server rule is FedAvg's."""
        return None

    def client_update(self, task: ClientTask, trainer, state: Any) -> tuple[ClientUpdate, Any]:
        """Local SGD from w_t on F_i(w) + (μ/2)‖w − w_t‖²: each step's gradient gets μ(w − w_t).

        References:
            Li et al., MLSys 2020, FedProx (local inexact minimisation of the proximal objective).
        """
        anchor = trainer.tensor(task.params)  # w_t as received
        mu = self.mu
        new, loss = trainer.sgd(task.params, extra_grad=lambda w: mu * (w - anchor))  # ∇ + μ(w − w_t)
        return trainer.make_update(new, loss), state

    def aggregate(self, state: None, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[None, Params]:
        """FedAvg's step x_{t+1} = x_t + η Σ_{i∈S_t} a_i Δ_i; empty round: no change."""
        if not updates:
            return state, params
        return state, apply_delta(params, scaled(averaged_delta(updates, self.weighting), self.server_lr))
