"""FedSpeed (Sun et al., ICLR 2023): prox-correction + SAM-perturbed local steps.

Update rule (Sun et al., ICLR 2023, following the authors' code):
    client i, K steps from w_t (as received), minibatch ξ per step:
        g1 = ∇ℓ(w; ξ);  ŵ = w + ρ g1/(‖g1‖ + 1e-7);  g2 = ∇ℓ(ŵ; ξ)     (§7.3 steps 1–3)
        d  = clip_10(g2 + λ(h_i − w_t))                                  (§7.3 step 4)
        w ← w − η_l (d + (wd + λ) w)                                     (§7.3 step 5)
        h_i ← h_i + (w_i^K − w_t)                                        (§7.4)
    server:  w_{t+1} = mean_{i∈S_t} w_i^K + (1/N) Σ_{i∈[N]} h_i          (§7.4)
Memory-light form (§7.2 [DER]): h_i is per-client state kept by the engine; the server
keeps only h̄ = (1/N) Σ h_i and adds Δ_i/N for each participant, which gives the same
result as the code's server-side table. With ρ = 0 and wd = 0 the fixed point is the
exact optimum of Σ F_i (§7.7). Empty round: no change. The local lr schedule is the
client block's `lr` / `lr_decay` (the code uses 0.1 · 0.998^t).

Example:
    strategy: {name: fedspeed, lamb: 0.1, rho: 0.1, weight_decay: 0.001}

References:
    Sun, Shen, Chen, Ding, Tao, "FedSpeed: Larger Local Interval, Less Communication
    Round, and Higher Generalization Accuracy", ICLR 2023. https://arxiv.org/abs/2302.10429
    Code: github.com/woodenchild95/FL-Simulator (client/fedspeed.py, server/FedSpeed.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from fedsim.scenario.fields import bounded
from fedsim.strategy.maths import sorted_updates, weighted_sum
from fedsim.strategy.server_opt import server_opt_field
from fedsim.types import ClientTask, ClientUpdate, Params, RoundInfo


@dataclass(frozen=True)
class FedSpeedState:
    h_mean: np.ndarray  # h̄ = (1/N) Σ_i h_i over all N clients (float64)


@dataclass(frozen=True, kw_only=True)
class FedSpeed:
    """FedSpeed.

    Args:
        lamb: λ, prox-correction coefficient (the code's `--lamb`; the paper's 1/λ).
        rho: ρ, SAM perturbation radius (0 disables the perturbation).
        weight_decay: wd; the local step uses wd + λ.
        clip_norm: global-norm clip of the corrected gradient (10 in the code).
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None

    lamb: float = bounded(0.1, gt=0.0)
    rho: float = bounded(0.1, ge=0.0)
    weight_decay: float = bounded(1e-3, ge=0.0)
    clip_norm: float = bounded(10.0, gt=0.0)
    server_opt: Any = server_opt_field()

    def init(self, params: Params, num_clients: int) -> FedSpeedState:
        return FedSpeedState(np.zeros(params.size, dtype=np.float64))

    def client_update(self, task: ClientTask, trainer, state: Any) -> tuple[ClientUpdate, Any]:
        d = task.params.size
        h = np.zeros(d, dtype=np.float32) if state is None else np.asarray(state, dtype=np.float32)
        corr = trainer.tensor(self.lamb * (h - task.params))  # λ(h_i − w_t)
        new, loss = trainer.sgd(task.params, extra_grad=lambda w: corr, sam_rho=self.rho,
                                clip_norm=self.clip_norm, weight_decay=self.weight_decay + self.lamb)
        update = trainer.make_update(new, loss)
        return update, (h.astype(np.float64) + update.delta).astype(np.float32)  # h_i += w^K − w_t

    def aggregate(self, state: FedSpeedState, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[FedSpeedState, Params]:
        if not updates:
            return state, params
        ups = sorted_updates(updates)
        m = len(ups)
        deltas = [u.delta for u in ups]
        h_mean = state.h_mean + weighted_sum(deltas, np.full(m, 1.0 / info.num_clients))  # h̄ += Σ_S Δ_i/N
        mean_w = params.astype(np.float64) + weighted_sum(deltas, np.full(m, 1.0 / m))  # mean_S w_i^K
        return FedSpeedState(h_mean), (mean_w + h_mean).astype(np.float32)
