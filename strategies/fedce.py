"""FedCE (Jiang et al., CVPR 2023): aggregation weights from estimated client contributions.

Update rule (Jiang et al., CVPR 2023, Sec. 3, and NVFlare's FedCE code), over the clients J
whose update arrived in round t:

Client j (`client_update`): with its coefficient c_j (sent down by `configure`) and its
previous local model w_j^prev (kept in its per-client state), build the minus model
    m_j = (x_t − c_j w_j^prev) / (1 − c_j)                               (§8.3 step 2)
and score it on its local validation split (`score_split`), D_j = metric(m_j) ∈ [0, 1]
(accuracy; for regression 1/(1 + loss)). At its first participation D_j := 0 (the paper's round-0 rule).
It trains as usual and sends Δ_j with s_j = 1 − mean_r D_j^(r) (`FedCEUp.score`, §8.3 step 4).

Server (`aggregate`):
    prior p_j = c_j (a never-seen client: 1/(n_known + 1)), normalised over J
    G = Σ_{k∈J} p_k Δ_k;  cos_j = cos(Δ_j, G − p_j Δ_j)  (0 if a vector is zero)   (§8.4 1–2)
    g_j = max(0, 1 − running mean of cos_j);   d_j = s_j                       (§8.4 3–4)
    u_j = norm(g)_j + norm(d)_j  (mode plus)  or  norm(g)_j · norm(d)_j  (mode times)
    c_j ← norm(u)_j;   x_{t+1} = x_t + η Σ_{j∈J} c_j Δ_j                       (§8.4 5–6)

`norm` is the 2026 NVFlare port's max(v, ε)/Σ max(v, ε) (`clip: before`, ε = 1e-6, so Σc = 1
exactly) or the original assembler's clip(v/Σv, ≥ ε) (`clip: after`, with ε = 1e-3 it
reproduces the original's numbers of NVFlare's FedCE unit test). Partial participation (the original
assumes everyone, every round): coefficients are renormalised over the participants, absent
clients keep their last coefficient, the cosine history is a per-client running mean, and a
client's minus model uses its coefficient from the last round it took part in. The identity
x_t = Σ c_k w_k^prev behind the minus model is exact only with full participation and η = 1;
otherwise the minus model is an approximation. An update without a finite
score is left out of the round and counted in `fedce_rejected`.

Example:
    strategy: {name: fedce, mode: plus}

References:
    M. Jiang, H. R. Roth, W. Li, D. Yang, C. Zhao, V. Nath, D. Xu, Q. Dou, Z. Xu, "Fair
    Federated Medical Image Segmentation via Client Contribution Estimation", CVPR 2023.
    https://arxiv.org/abs/2303.16520 (code: NVIDIA/NVFlare research/fed-ce, nvflare/app_opt/pt/fedce.py)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from fedsim.scenario.fields import bounded
from fedsim.strategy.maths import apply_delta, sorted_updates, weighted_sum
from fedsim.strategy.server_opt import scaled, server_opt_field
from fedsim.types import ClientTask, ClientUpdate, Params, RoundInfo


@dataclass(frozen=True)
class FedCEDown:
    """Server → client: the coefficient for the client's minus model."""

    coef: float  # c_j


@dataclass(frozen=True)
class FedCEUp:
    """Client → server: the data-space score (NVFlare's `fedce_minus_val` metadata)."""

    score: float  # s_j = 1 − mean_r D_j^(r)


def normalise(values: np.ndarray, epsilon: float, clip: str) -> np.ndarray:
    """Contribution normalisation (Jiang et al., CVPR 2023, Sec. 3).

    `before` (2026 port): v ← max(v, ε), then v/Σv (sums to 1).
    `after` (original): v/Σv, then max(·, ε) (may sum to slightly more than 1).
    A zero total (only possible with `after`) gives the uniform vector instead of 0/0.
    """
    v = np.asarray(values, dtype=np.float64)
    if clip == "before":
        v = np.maximum(v, epsilon)
        return v / v.sum()
    total = v.sum()
    if not total > 0:
        return np.full(len(v), 1.0 / len(v))
    return np.maximum(v / total, epsilon)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """cos(a, b), defined as 0 when either vector is zero (the port's guard)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


@dataclass(frozen=True)
class FedCEState:
    """Server memory, arrays of length N (NaN = client never aggregated)."""

    coef: np.ndarray  # c_j from the last round j took part in
    cos_mean: np.ndarray  # running mean of cos_j
    cos_count: np.ndarray  # rounds in that mean
    grad_score: np.ndarray  # last normalised gradient-space score
    data_score: np.ndarray  # last s_j received
    rejected: np.ndarray  # updates left out for lack of a finite score


def prior_coefficient(state: FedCEState, client: int) -> float:
    """c_j, or 1/(n_known + 1) for a client that has no coefficient yet (port rule)."""
    c = state.coef[client]
    return float(c) if np.isfinite(c) else 1.0 / (int(np.isfinite(state.coef).sum()) + 1)


@dataclass(frozen=True)
class FedCEClientState:
    """What a client keeps between its rounds (stored by the engine)."""

    w_prev: np.ndarray  # local model after its last training (float32)
    score_sum: float  # Σ_r D_j^(r): the history of minus-model scores, as a sum ...
    score_count: int  # ... and a count (constant memory)


@dataclass(frozen=True, kw_only=True)
class FedCE:
    """Contribution-estimation aggregation (gradient space + data space).

    Args:
        mode: `plus` (u = g + d, the default) or `times` (u = g·d).
        clip: `before` (2026 NVFlare port: ε floor before normalising) or `after` (original).
        epsilon: ε, the floor (1e-6 in the port, 1e-3 in the original).
        server_lr: η; 1 in the paper (the minus-model identity assumes it).
        score_split: where a client scores its minus model: `val` (its local validation split,
            as in the paper; in fedsim that is also the local test split behind the per-client
            fairness metrics) or `train` (keeps those metrics out of the weighting).
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = FedCEDown
    up_type: ClassVar[type | None] = FedCEUp
    client_state_type: ClassVar[type | None] = FedCEClientState

    mode: Literal["plus", "times"] = "plus"
    clip: Literal["before", "after"] = "before"
    epsilon: float = bounded(1e-6, gt=0.0, lt=1.0)
    server_lr: float = bounded(1.0, gt=0.0)
    score_split: Literal["val", "train"] = "val"
    server_opt: Any = server_opt_field()

    def init(self, params: Params, num_clients: int) -> FedCEState:
        nan = np.full(num_clients, np.nan)
        return FedCEState(nan, np.zeros(num_clients), np.zeros(num_clients, dtype=np.int64), nan.copy(),
                          nan.copy(), np.zeros(num_clients, dtype=np.int64))

    def configure(self, state: FedCEState, client: int, info: Any) -> FedCEDown:
        return FedCEDown(prior_coefficient(state, client))  # c_j for the client's minus model

    # -- client side (Jiang et al.) -----------------------------------------------------------

    def client_update(self, task: ClientTask, trainer: Any,
                      client_state: FedCEClientState | None) -> tuple[ClientUpdate, FedCEClientState]:
        c = None if task.down is None else task.down.coef
        total, count = (client_state.score_sum, client_state.score_count) if client_state else (0.0, 0)
        score = None
        if client_state is None:
            score = 0.0  # first participation: D^(0) := 0 (the paper's round-0 rule)
        elif c is not None and 0.0 <= c < 1.0:
            x = task.params.astype(np.float64)
            minus = ((x - c * client_state.w_prev.astype(np.float64)) / (1.0 - c)).astype(np.float32)  # §8.3 step 2
            score = minus_metric(trainer.evaluate(minus, self.score_split), trainer.rt.regression)
        if score is not None and math.isfinite(score):
            total, count = total + score, count + 1
        new, loss = trainer.sgd(task.params)
        s = 1.0 - (total / count if count else 0.0)  # s_j = 1 − mean_r D_j^(r)  (§8.3 step 4)
        metrics = {}
        if score is not None and math.isfinite(score):
            metrics["fedce_minus_metric"] = score  # D_j^(t), for inspection
        update = trainer.make_update(new, loss, FedCEUp(s), **metrics)
        return update, FedCEClientState(new.astype(np.float32), total, count)

    # -- server side (Jiang et al.) -----------------------------------------------------------

    def aggregate(self, state: FedCEState, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[FedCEState, Params]:
        ups, rejected = [], state.rejected.copy()
        for u in sorted_updates(updates):
            s = _score(u.up)
            if s is None:
                rejected[u.client] += 1
            else:
                ups.append((u, s))
        if not ups:
            return dataclasses.replace(state, rejected=rejected), params  # empty round: no change
        clients = np.array([u.client for u, _ in ups])
        deltas = [u.delta.astype(np.float64) for u, _ in ups]
        prior = normalise(np.array([prior_coefficient(state, int(k)) for k in clients]), self.epsilon, self.clip)
        consensus = weighted_sum(deltas, prior)  # G = Σ p_k Δ_k  (step 1)
        cos = np.array([cosine(d, consensus - p * d) for d, p in zip(deltas, prior)])  # step 2: G_{−j}
        count = state.cos_count.copy()
        mean = state.cos_mean.copy()
        count[clients] += 1
        mean[clients] += (cos - mean[clients]) / count[clients]  # running mean of cos_j
        g = normalise(np.maximum(0.0, 1.0 - mean[clients]), self.epsilon, self.clip)  # step 3
        d = normalise(np.array([s for _, s in ups]), self.epsilon, self.clip)  # step 4
        u = g + d if self.mode == "plus" else g * d
        c = normalise(u, self.epsilon, self.clip)  # step 5
        coef, gs, ds = state.coef.copy(), state.grad_score.copy(), state.data_score.copy()
        coef[clients], gs[clients], ds[clients] = c, g, [s for _, s in ups]
        step = weighted_sum(deltas, c)  # step 6: Σ_J c_j Δ_j
        new_state = FedCEState(coef, mean, count, gs, ds, rejected)
        return new_state, apply_delta(params, scaled(step, self.server_lr))

    def client_report(self, state: FedCEState) -> dict[int, dict[str, Any]]:
        """Contribution c_j and its two parts (NaN/null until the client is first aggregated)."""
        return {k: {"fedce_contribution": float(state.coef[k]), "fedce_grad_score": float(state.grad_score[k]),
                    "fedce_data_score": float(state.data_score[k]), "fedce_rejected": int(state.rejected[k])}
                for k in range(len(state.coef))}


def minus_metric(result: Mapping[str, float], regression: bool) -> float:
    """D ∈ [0, 1]: accuracy (classification) or 1/(1 + loss) for regression, where the paper's
    Dice/accuracy does not exist. NaN when the client has no validation data."""
    if regression:
        loss = result["loss"]
        return 1.0 / (1.0 + loss) if not math.isnan(loss) else float("nan")
    return float(result["accuracy"])


def _score(up: FedCEUp | None) -> float | None:
    """s_j from an update's up message, clipped to [0, 1] (its range by construction), or None
    if absent/non-finite."""
    s = getattr(up, "score", None)
    if s is None:
        return None
    try:
        s = float(s)
    except (TypeError, ValueError):
        return None
    return min(1.0, max(0.0, s)) if math.isfinite(s) else None
