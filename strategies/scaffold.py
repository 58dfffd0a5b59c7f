"""SCAFFOLD (Karimireddy et al., ICML 2020) with control variates, option II.

Update rule:
    client i (K local steps, lr η_l, from x = w_t):
        y ← y − η_l (g_i(y) − c_i + c)                        (Alg. 1 line 10)
        c_i⁺ = c_i − c + (x − y_K) / (K η_l)                   (line 12, option II)
        sends Δy_i = y_K − x and Δc_i = c_i⁺ − c_i             (line 13)
    server:
        x_{t+1} = x_t + η_g · (1/|S|) Σ_{i∈S} Δy_i              (line 16)
        c ← c + (1/N) Σ_{i∈S} Δc_i                             (line 17, |S|/N · mean)
`c` lives in the strategy state and goes down with the model as `ScaffoldDown(c)` (the
task's `down`); `c_i` is per-client state kept by the engine; Δc_i comes back as
`ScaffoldUp(delta_c)` (the update's `up`), which the engine validates (finite, shape (d,)).
Channel noise is applied by the engine to the model delta only, not to c or Δc.
Empty round: no change.

Example:
    strategy: {name: scaffold, server_lr: 1.0}

References:
    Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic Controlled
    Averaging for Federated Learning", ICML 2020. https://arxiv.org/abs/1910.06378
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from fedsim.scenario.fields import bounded
from fedsim.strategy.maths import apply_delta, sorted_updates, weighted_sum
from fedsim.strategy.server_opt import scaled, server_opt_field
from fedsim.types import ClientTask, ClientUpdate, Params, RoundInfo


@dataclass(frozen=True)
class ScaffoldDown:
    """Server → client: the server control variate."""

    c: np.ndarray  # c (float32 copy: the client can never alias server state)


@dataclass(frozen=True)
class ScaffoldUp:
    """Client → server: the change of the client's control variate."""

    delta_c: np.ndarray  # Δc_i = c_i⁺ − c_i (float32)


@dataclass(frozen=True)
class ScaffoldState:
    """The server control variate c, shape (d,)."""
    c: np.ndarray  # server control variate (float64)


@dataclass(frozen=True, kw_only=True)
class Scaffold:
    """Stochastic controlled averaging.

    Args:
        server_lr: η_g, the global step size.
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = ScaffoldDown
    up_type: ClassVar[type | None] = ScaffoldUp

    server_lr: float = bounded(1.0, gt=0.0)
    server_opt: Any = server_opt_field()

    def init(self, params: Params, num_clients: int) -> ScaffoldState:
        """Start with c = 0 (float64, the model's size)."""
        return ScaffoldState(np.zeros(params.size, dtype=np.float64))

    def configure(self, state: ScaffoldState, client: int, info: RoundInfo) -> ScaffoldDown:
        """Send the server control variate c (a float32 copy) with the model."""
        return ScaffoldDown(state.c.astype(np.float32))  # a copy: the client can never alias server state

    def client_update(self, task: ClientTask, trainer, state: Any) -> tuple[ClientUpdate, Any]:
        """K corrected local steps, then option II's new c_i; sends Δy_i and ScaffoldUp(Δc_i).

        c_i = 0 at a client's first participation; the new client state is c_i⁺ (float32, (d,)).

        References:
            Karimireddy et al., ICML 2020, Alg. 1 lines 10–13 (option II).
        """
        d = task.params.size
        c = np.asarray(np.zeros(d) if task.down is None else task.down.c, dtype=np.float32)
        c_i = np.zeros(d, dtype=np.float32) if state is None else np.asarray(state, dtype=np.float32)
        corr = trainer.tensor(c - c_i)  # −c_i + c, constant over the job
        new, loss = trainer.sgd(task.params, extra_grad=lambda w: corr)
        steps, lr = trainer.steps, trainer.lr
        x = task.params.astype(np.float64)
        c_new = c_i.astype(np.float64) - c + (x - new.astype(np.float64)) / (steps * lr)  # option II
        update = trainer.make_update(new, loss, ScaffoldUp((c_new - c_i).astype(np.float32)))
        return update, c_new.astype(np.float32)

    def aggregate(self, state: ScaffoldState, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[ScaffoldState, Params]:
        """Step x ← x + η_g mean_S Δy_i and c ← c + (1/N) Σ_S Δc_i; empty round: no change.

        References:
            Karimireddy et al., ICML 2020, Alg. 1 lines 16–17.
        """
        if not updates:
            return state, params
        ups = sorted_updates(updates)
        m = len(ups)
        step = weighted_sum([u.delta for u in ups], np.full(m, 1.0 / m))  # mean Δy
        dc = weighted_sum([u.up.delta_c for u in ups], np.full(m, 1.0 / info.num_clients))
        return ScaffoldState(state.c + dc), apply_delta(params, scaled(step, self.server_lr))
