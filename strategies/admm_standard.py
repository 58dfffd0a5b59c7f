"""Textbook noisy consensus ADMM with random scheduling (the baseline of the noise-robust
ADMM; Boyd et al., FnT ML 2011, Sec. 7.1).

Update rule, scheduled client k at iteration n (noisy z̃_k = z + ε_k):
    if k was scheduled before:  λ_k ← λ_k + ρ(w_k − z̃_k)            (§9.3 step 2)
    w_k ← argmin f_k(w) + ⟨λ_k, w⟩ + (ρ/2)‖w − z̃_k‖²
        = (A_k + ρI)^{-1}(b_k + ρ z̃_k − λ_k)                         (step 3)
    sends w_k + λ_k/ρ (`message: w_plus_dual`) or only w_k (`message: w`, the variant in
    which the server assumes Σλ = 0 and the noise accumulates in the duals)  (step 4)
server: z ← mean of the received messages of this iteration (or, with server_memory, of
every client's last received message). Empty schedule: z unchanged. Unscheduled clients
are frozen (their stale duals persist, §9.6).

Message convention: as for `admm`, the update carries the message itself (kind "model").
Noiseless with full participation this reaches the least-squares optimum exactly (T11).
Local solve: closed form for the `linear` model, else local SGD (see `admm`).

Example:
    strategy: {name: admm_standard, rho: 1.0, message: w_plus_dual}

References:
    Boyd, Parikh, Chu, Peleato, Eckstein, "Distributed Optimization and Statistical
    Learning via the Alternating Direction Method of Multipliers", FnT ML 2011, §7.1.
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
class AdmmStandardClient:
    w: np.ndarray  # w_k (float64)
    lam: np.ndarray  # λ_k (float64)


@dataclass(frozen=True)
class AdmmStandardServer:
    last: Mapping[int, np.ndarray]  # client -> last received message (only with server_memory)


@dataclass(frozen=True, kw_only=True)
class AdmmStandard:
    """Consensus ADMM (primal, dual and global updates each iteration).

    Args:
        rho: ρ, the ADMM penalty.
        message: `w_plus_dual` (textbook, sends w_k + λ_k/ρ) or `w` (sends w_k only).
        server_memory: average every client's last received message instead of only
            this iteration's.
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "model"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None
    client_state_type: ClassVar[type | None] = AdmmStandardClient

    rho: float = bounded(1.0, gt=0.0)
    message: Literal["w_plus_dual", "w"] = "w_plus_dual"
    server_memory: bool = False
    server_opt: Any = server_opt_field()

    def init(self, params: Params, num_clients: int) -> AdmmStandardServer:
        return AdmmStandardServer({})

    def client_update(self, task: ClientTask, trainer, state: AdmmStandardClient | None) -> tuple[ClientUpdate, Any]:
        z = task.params.astype(np.float64)
        if state is None:
            lam, start = np.zeros(z.size), None
        else:
            lam, start = state.lam + self.rho * (state.w - z), state.w  # dual ascent with the new z̃_k
        w = prox_solve(trainer, z, self.rho, linear=lam, start=start)
        msg = w + lam / self.rho if self.message == "w_plus_dual" else w
        loss = trainer.evaluate(w.astype(np.float32), split="train")["loss"]
        return trainer.make_model_update(msg, loss), AdmmStandardClient(w, lam)  # the message itself

    def aggregate(self, state: AdmmStandardServer, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[AdmmStandardServer, Params]:
        if not updates:
            return state, params
        last, z = consensus_average(state.last, updates, self.server_memory)
        return AdmmStandardServer(last if self.server_memory else state.last), z
