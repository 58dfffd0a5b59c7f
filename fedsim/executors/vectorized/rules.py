"""Batched client rules: the built-in strategies' client updates as SGD requests.

Batched client rules: each strategy's `client_update`, rewritten so that its local SGD
is a request (`yield SgdCall`) the executor fulfils for a whole cohort at once.

A rule is a generator `rule(strategy, task, trainer, state)`: it does the client's
per-job numpy work (reading its per-client state, building the correction vectors),
yields one `SgdCall` per local-SGD run it needs and receives `(new_params, loss)` back,
then returns `(ClientUpdate, client_state)`, exactly what the strategy's own
`client_update` returns. `trainer` is the inline `LocalTrainer` of the job, so its
generator, evaluation and closed-form helpers are the inline ones.

`RULES` maps a strategy class to its rule and to the `client_update` function the rule
was written against: when a class (or a subclass) has any other `client_update`, there is
no batched rule for it and the executor runs its jobs one by one (`rule_for`). Every
read of the typed down message (`task.down`) and every uplink message built here goes
through the four small functions below, so a change of the message types touches only them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Generator

import numpy as np

from fedsim.executors.vectorized.batched import SgdCall
from fedsim.registry import import_entry
from fedsim.types import ClientTask, ClientUpdate

Rule = Callable[[Any, ClientTask, Any, Any], Generator[SgdCall, tuple[np.ndarray, float], tuple[ClientUpdate, Any]]]


# -- the message interface, in one place -------------------------------------------------

def down(task: ClientTask, field: str, default: Any = None) -> Any:
    """A field of the typed message the server sent down with the model (`Strategy.configure`)."""
    return default if task.down is None else getattr(task.down, field)


def delta_update(trainer: Any, new: np.ndarray, loss: float, up: Any = None, **metrics: float) -> ClientUpdate:
    """The usual uplink message: Δ = w_local − w_received (kind "delta"), with the train loss."""
    return trainer.make_update(new, loss, up, **metrics)


def model_update(task: ClientTask, trainer: Any, w: np.ndarray, loss: float) -> ClientUpdate:
    """An uplink message that carries a model (kind "model": the ADMM family), not a delta."""
    return trainer.make_model_update(np.asarray(w, dtype=np.float32), loss)


def with_up(update: ClientUpdate, up: Any) -> ClientUpdate:
    """`update` with the strategy's typed up message (SCAFFOLD's Δc)."""
    return dataclasses.replace(update, up=up)


# -- building SGD requests -----------------------------------------------------------------

def sgd_call(trainer: Any, params: np.ndarray, *, weight_decay: float | None = None,
             sam_rho: float = 0.0, clip_norm: float | None = None, shift: np.ndarray | None = None,
             prox: float = 0.0, anchor: np.ndarray | None = None) -> SgdCall:
    """A local-SGD request with `LocalTrainer.sgd`'s defaults.

    A local-SGD request with `LocalTrainer.sgd`'s defaults (the client block's steps,
    decayed lr, weight decay, momentum and clip).

    Args:
        trainer: the job's `LocalTrainer`.
        params: start parameters.
        weight_decay: overrides the client block's.
        sam_rho: SAM radius.
        clip_norm: overrides the client block's.
        shift: constant extra gradient.
        prox: proximal coefficient.
        anchor: proximal centre.

    Returns:
        The request.
    """
    cfg = trainer.rt.cfg
    return SgdCall(
        start=np.asarray(params, dtype=np.float32), steps=trainer.steps, lr=trainer.lr,
        weight_decay=cfg.weight_decay if weight_decay is None else weight_decay, momentum=cfg.momentum,
        clip_norm=cfg.clip_norm if clip_norm is None else clip_norm, sam_rho=sam_rho,
        shift=None if shift is None else np.asarray(shift, dtype=np.float32), prox=prox,
        anchor=None if anchor is None else np.asarray(anchor, dtype=np.float32))


# -- the rules -----------------------------------------------------------------------------

def plain_sgd(strategy: Any, task: ClientTask, trainer: Any, state: Any):
    """FedAvg's client (McMahan et al., AISTATS 2017, Alg. 1 ClientUpdate): local SGD."""
    new, loss = yield sgd_call(trainer, task.params)
    return delta_update(trainer, new, loss), state


def fedprox(strategy: Any, task: ClientTask, trainer: Any, state: Any):
    """FedProx (Li et al., MLSys 2020, §3 Eq. 2): gradient ∇ℓ(w; ξ) + μ(w − w_t)."""
    new, loss = yield sgd_call(trainer, task.params, prox=strategy.mu, anchor=task.params)
    return delta_update(trainer, new, loss), state


def scaffold(strategy: Any, task: ClientTask, trainer: Any, state: Any):
    """SCAFFOLD (Karimireddy et al., ICML 2020, Alg. 1 lines 10-13, option II)."""
    d = task.params.size
    from strategies.scaffold import ScaffoldUp

    c = np.asarray(down(task, "c", np.zeros(d)), dtype=np.float32)
    c_i = np.zeros(d, dtype=np.float32) if state is None else np.asarray(state, dtype=np.float32)
    new, loss = yield sgd_call(trainer, task.params, shift=c - c_i)  # y ← y − η(g − c_i + c)
    x = task.params.astype(np.float64)
    c_new = c_i.astype(np.float64) - c + (x - new.astype(np.float64)) / (trainer.steps * trainer.lr)
    update = with_up(delta_update(trainer, new, loss), ScaffoldUp((c_new - c_i).astype(np.float32)))
    return update, c_new.astype(np.float32)


def fedspeed(strategy: Any, task: ClientTask, trainer: Any, state: Any):
    """FedSpeed's client (Sun et al., ICLR 2023, Alg. 1 lines 5-9).

    FedSpeed (Sun et al., ICLR 2023, Alg. 1 lines 5-9): SAM gradient, prox-correction
    λ(h_i − w_t), clip, then the step with weight decay wd + λ; h_i += w^K − w_t.
    """
    d = task.params.size
    h = np.zeros(d, dtype=np.float32) if state is None else np.asarray(state, dtype=np.float32)
    new, loss = yield sgd_call(trainer, task.params, shift=strategy.lamb * (h - task.params),
                               sam_rho=strategy.rho, clip_norm=strategy.clip_norm,
                               weight_decay=strategy.weight_decay + strategy.lamb)
    update = delta_update(trainer, new, loss)
    return update, (h.astype(np.float64) + update.delta).astype(np.float32)


def prox_solve(trainer: Any, anchor: np.ndarray, rho: float, linear: np.ndarray | None = None,
               start: np.ndarray | None = None):
    """`fedsim.strategy.maths.prox_solve` as a generator of SGD requests.

    `fedsim.strategy.maths.prox_solve` as a generator: the closed form for the linear
    model (per job, no SGD), else one local-SGD request on F_k(w) + ⟨linear, w⟩ + (ρ/2)‖w − anchor‖²
    (Boyd et al., FnT ML 2011, §7.1 Eq. 7.6, the x-update).
    """
    from fedsim.strategy.maths import least_squares_moments

    lin = np.zeros(anchor.size) if linear is None else np.asarray(linear, dtype=np.float64)
    moments = least_squares_moments(trainer)
    if moments is not None:
        a, b = moments
        return np.linalg.solve(a + rho * np.eye(a.shape[0]), b + rho * anchor.astype(np.float64) - lin)
    x0 = anchor if start is None else start
    new, _ = yield sgd_call(trainer, np.asarray(x0, dtype=np.float32), shift=lin.astype(np.float32), prox=rho,
                            anchor=anchor.astype(np.float32))
    return new.astype(np.float64)


def admm(strategy: Any, task: ClientTask, trainer: Any, state: Any):
    """The noise-robust dual-free ADMM client (Lari et al., arXiv 2409.13451, 2024).

    Noise-robust dual-free ADMM (Lari et al., arXiv 2409.13451, 2024; fedsim's
    reconstruction, docs/admm.md): the continual iterations missed while unscheduled,
    then one damped proximal step towards the fresh z̃_k.
    """
    from strategies.admm import AdmmClient, continual_iterations

    z = task.params.astype(np.float64)
    if state is None:
        w = yield from prox_solve(trainer, z, strategy.rho)
    else:
        w = state.w
        missed = task.round - state.round - 1
        if strategy.continual and missed > 0:
            target = yield from prox_solve(trainer, state.z, strategy.rho, start=w)
            w = continual_iterations(w, target, strategy.mu, missed)
        target = yield from prox_solve(trainer, z, strategy.rho, start=w)
        w = continual_iterations(w, target, strategy.mu, 1)
    loss = trainer.evaluate(w.astype(np.float32), split="train")["loss"]
    return model_update(task, trainer, w, loss), AdmmClient(w, z, task.round)


def admm_standard(strategy: Any, task: ClientTask, trainer: Any, state: Any):
    """The consensus ADMM client (Boyd et al., FnT ML 2011, §7.1).

    Consensus ADMM (Boyd et al., FnT ML 2011, §7.1 Eqs. 7.6-7.8): dual ascent with the
    new z̃_k, then the proximal x-update; sends w_k (+ λ_k/ρ).
    """
    from strategies.admm_standard import AdmmStandardClient

    z = task.params.astype(np.float64)
    if state is None:
        lam, start = np.zeros(z.size), None
    else:
        lam, start = state.lam + strategy.rho * (state.w - z), state.w
    w = yield from prox_solve(trainer, z, strategy.rho, linear=lam, start=start)
    msg = w + lam / strategy.rho if strategy.message == "w_plus_dual" else w
    loss = trainer.evaluate(w.astype(np.float32), split="train")["loss"]
    return model_update(task, trainer, msg, loss), AdmmStandardClient(w, lam)


def fedce(strategy: Any, task: ClientTask, trainer: Any, state: Any):
    """FedCE's client (Jiang et al., CVPR 2023, §3.2).

    FedCE (Jiang et al., CVPR 2023, §3.2 Eqs. 4-5): score the minus model on local
    data (per job), then plain local SGD.
    """
    from strategies.fedce import FedCEClientState, FedCEUp, minus_metric

    c = down(task, "coef")
    total, count = (state.score_sum, state.score_count) if state else (0.0, 0)
    score = None
    if state is None:
        score = 0.0
    elif c is not None and 0.0 <= c < 1.0:
        x = task.params.astype(np.float64)
        minus = ((x - c * state.w_prev.astype(np.float64)) / (1.0 - c)).astype(np.float32)
        score = minus_metric(trainer.evaluate(minus, strategy.score_split), trainer.rt.regression)
    if score is not None and math.isfinite(score):
        total, count = total + score, count + 1
    new, loss = yield sgd_call(trainer, task.params)
    s = 1.0 - (total / count if count else 0.0)
    metrics = {}
    if score is not None and math.isfinite(score):
        metrics["fedce_minus_metric"] = score
    update = delta_update(trainer, new, loss, FedCEUp(s), **metrics)
    return update, FedCEClientState(new.astype(np.float32), total, count)


# strategy "module:Class" -> batched rule; the class's `client_update` at import time is
# what the rule reproduces (checked by `rule_for`).
RULES: dict[str, Rule] = {
    "strategies.fedprox:FedProx": fedprox,
    "strategies.scaffold:Scaffold": scaffold,
    "strategies.fedspeed:FedSpeed": fedspeed,
    "strategies.admm:Admm": admm,
    "strategies.admm_standard:AdmmStandard": admm_standard,
    "strategies.fedce:FedCE": fedce,
}


def rule_for(strategy: Any) -> Rule | None:
    """The batched rule of `strategy`, or None when its client rule cannot be batched.

    A strategy without `client_update` trains with plain local SGD. One with a
    `client_update` is batched only when that method is the very function a `RULES`
    entry was written for (a subclass that overrides it, or an out-of-tree strategy, is
    not), so a batched run never silently trains a different rule.

    Args:
        strategy: the scenario's strategy instance.

    Returns:
        The rule, or None (run the job per client).
    """
    method = getattr(type(strategy), "client_update", None)
    if method is None:
        return plain_sgd
    for entry, rule in RULES.items():
        cls = import_entry(entry)
        if getattr(cls, "client_update", None) is method:
            return rule
    return None
