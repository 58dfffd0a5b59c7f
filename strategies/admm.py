"""Noise-robust, resource-efficient ADMM FL (Lari, Arablouei, Gogineni, Werner, 2024) —
fedsim's reconstruction; see docs/admm.md for what is confirmed and what is not.

Update rule (Lari, Arablouei, Gogineni, Werner, arXiv 2409.13451, as
reconstructed here: damped proximal form, dual variable eliminated):
    w°_k(z̃) = argmin_w f_k(w) + (ρ/2)‖w − z̃‖² = (A_k + ρI)^{-1}(b_k + ρ z̃)
    one local iteration with the last received global z̃_k:
        w_k ← (1 − μ) w_k + μ w°_k(z̃_k)       (= w_k + μ(A_k+ρI)^{-1}[b_k − A_k w_k + ρ(z̃_k − w_k)])
    scheduled client at iteration n: it first performs the j = n − m − 1 continual
    iterations it ran while unscheduled since its last schedule m (same z̃_k each time, so
    in closed form w_k ← w° + (1 − μ)^j (w_k − w°)), then one iteration with the fresh
    noisy z̃_k = z + ε_k, and sends w_k (uplink: w̃_k = w_k + ζ_k).
    server: z ← mean_{k∈S_n} w̃_k (or, with server_memory, the mean of every client's last
    received w̃_k). Empty schedule: z unchanged.
No communication happens while a client is unscheduled, so performing its missed
iterations when it is next scheduled gives exactly the state it would have had by
iterating every round (`continual: false` freezes it instead).
The client's first schedule sets w_k = w°_k(z̃_k).

Message convention: the uplink message is the local model itself (`sends = "model"`: the
update's kind is "model" and `ClientUpdate.model` is w_k, not w_k − z̃_k); the engine's
uplink noise is applied to it exactly as the paper's channel model says, and its norm
bound, attacks and robust aggregation act on w_k − z̃_k / on w_k accordingly.

Local solve: closed form for the `linear` model on least-squares data; otherwise
`local_steps` SGD steps on f_k(w) + (ρ/2)‖w − z̃‖² (the client block's lr), documented as
an approximation. The objective is Σ_k F_k (uniform client weights).

Example:
    strategy: {name: admm, rho: 1.0, mu: 0.2, continual: true}

References:
    E. Lari, R. Arablouei, V. C. Gogineni, S. Werner, "Noise-Robust and Resource-Efficient
    ADMM-based Federated Learning", arXiv 2409.13451 (2024); earlier parts at IEEE SSP 2023
    and APSIPA ASC 2023.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, Sequence

import numpy as np

from fedsim.scenario.fields import bounded
from fedsim.strategy.maths import consensus_average, prox_solve
from fedsim.strategy.server_opt import server_opt_field
from fedsim.types import ClientTask, ClientUpdate, Params, RoundInfo


@dataclass(frozen=True)
class AdmmClient:
    w: np.ndarray  # w_k (float64)
    z: np.ndarray  # last received noisy global model z̃_k
    round: int  # iteration of the last schedule


@dataclass(frozen=True)
class AdmmServer:
    last: Mapping[int, np.ndarray]  # client -> last received w̃_k (only with server_memory)


def continual_iterations(w: np.ndarray, target: np.ndarray, mu: float, j: int) -> np.ndarray:
    """j iterations of w ← (1−μ)w + μ·target with a fixed target, in closed form."""
    return target + (1.0 - mu) ** j * (w - target)


@dataclass(frozen=True, kw_only=True)
class Admm:
    """Dual-free ADMM with continual local updates.

    Args:
        rho: ρ, the ADMM penalty (prox weight of the single received global model).
        mu: μ ∈ (0, 1], step of the local iteration (1 = jump to the proximal solution).
        continual: unscheduled clients keep iterating with their last z̃_k.
        server_memory: average every client's last received model instead of only this
            iteration's (costs one model per client on the server).
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "model"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None
    client_state_type: ClassVar[type | None] = AdmmClient

    rho: float = bounded(1.0, gt=0.0)
    mu: float = bounded(0.2, gt=0.0, le=1.0)
    continual: bool = True
    server_memory: bool = False
    server_opt: Any = server_opt_field()

    def init(self, params: Params, num_clients: int) -> AdmmServer:
        return AdmmServer({})

    def client_update(self, task: ClientTask, trainer, state: AdmmClient | None) -> tuple[ClientUpdate, Any]:
        z = task.params.astype(np.float64)  # z̃_k = z + ε_k (downlink noise applied by the engine)
        if state is None:
            w = prox_solve(trainer, z, self.rho)  # first schedule: w_k = w°_k(z̃_k)
        else:
            w = state.w
            missed = task.round - state.round - 1
            if self.continual and missed > 0:  # the iterations run while unscheduled
                w = continual_iterations(w, prox_solve(trainer, state.z, self.rho, start=w), self.mu, missed)
            w = continual_iterations(w, prox_solve(trainer, z, self.rho, start=w), self.mu, 1)
        loss = trainer.evaluate(w.astype(np.float32), split="train")["loss"]
        return trainer.make_model_update(w, loss), AdmmClient(w, z, task.round)  # the message is w_k

    def aggregate(self, state: AdmmServer, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[AdmmServer, Params]:
        if not updates:
            return state, params  # empty schedule: z unchanged
        last, z = consensus_average(state.last, updates, self.server_memory)
        return AdmmServer(last if self.server_memory else state.last), z
