"""Server optimisers: small chainable transformations of the server step, with explicit state.

The server pipeline is aggregation → server optimiser. A strategy's aggregation proposes a
new model x'; the pseudo-gradient Δ_t = x' − x_t (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021, Sec. 2, the "pseudo-gradient" −Δ_t) goes through a transformation
that returns the step s_t, and the engine commits x_{t+1} = x_t + s_t
(`fedsim.strategy.server_opt.server_step`). Sign: fedsim's Δ points downhill (local −
start), so every rule below *adds* its step.

Each transformation is a frozen dataclass (its fields are the YAML keys of
`strategy.server_opt`) with

  * `init(params) -> state`: the initial, immutable state;
  * `update(step, state, params) -> (step, state)`: the transformed step and the next state,

over flat float64 vectors, in the style of optax (Babuschkin et al., "The DeepMind JAX
Ecosystem", 2020). `chain(a, b, ...)` composes them left to right. States are frozen
dataclasses or tuples and are never modified in place, so checkpoints pickle them as they are.

Conventions (Flower's FedOpt strategies are the reference implementation compared in the tests):
  * v_{-1} = `initial_accumulator` (0 by default, as in Flower; Reddi et al. ask v_{-1} ≥ τ²).
  * Adam's step uses m_t, not Δ_t, in the numerator (Reddi et al., Alg. 2, line 13); Flower's
    FedAdam/FedYogi used Δ_t there until its PR #893.
  * No bias correction by default (Reddi et al., Alg. 2, as Flower before its PR #4362).
    `bias_correction: kingma` scales η by √(1−β2^t)/(1−β1^t) with t = 1, 2, ... (Kingma & Ba,
    "Adam", ICLR 2015, Sec. 2, the line before Sec. 2.1); `bias_correction: flower` uses
    t + 1 instead, which is what Flower's FedAdam computes since PR #4362 (its rounds count
    from 1 and it raises β to `server_round + 1`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, Sequence

import numpy as np

from fedsim.scenario.fields import bounded, plugin

SERVER_OPT_DOC = ("server optimiser applied to Δ = aggregate − model before the engine commits "
                  "(`none`, `sgd`, `momentum`, `adam`, `yogi`, `adagrad`, `chain`); "
                  "see docs/strategies.md")


def server_opt_field() -> Any:
    """The `server_opt` field every strategy ends with (default: no server optimiser)."""
    return plugin("server_opt", {"name": "none"}, doc=SERVER_OPT_DOC)


class Transformation(Protocol):
    """What the engine needs of a server optimiser."""

    def init(self, params: np.ndarray) -> Any:
        """The initial optimiser state for a model of shape `params.shape`."""

    def update(self, step: np.ndarray, state: Any, params: np.ndarray) -> tuple[np.ndarray, Any]:
        """Map the pseudo-gradient `step` to the applied step and the next state."""


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------------
# Plain steps
# ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Identity:
    """No server optimiser: the aggregated model is committed as it is (the default).

    The engine skips the pipeline's arithmetic entirely for it, so runs are bit-identical to
    a strategy without `server_opt`.
    """

    identity: ClassVar[bool] = True
    lr_key: ClassVar[str | None] = None

    def init(self, params: np.ndarray) -> tuple:
        """No state."""
        return ()

    def update(self, step: np.ndarray, state: tuple, params: np.ndarray) -> tuple[np.ndarray, tuple]:
        """The step unchanged."""
        return step, state


@dataclass(frozen=True, kw_only=True)
class Sgd:
    """Server SGD with learning rate η: s_t = η Δ_t.

    Reddi et al., ICLR 2021, Alg. 1 (line 10, SERVEROPT = SGD): FedAvg with a server learning rate.

    Args:
        lr: η, the server learning rate.
    """

    lr: float = bounded(1.0, gt=0.0, le=1e6)
    lr_key: ClassVar[str | None] = "lr"

    def init(self, params: np.ndarray) -> tuple:
        """No state."""
        return ()

    def update(self, step: np.ndarray, state: tuple, params: np.ndarray) -> tuple[np.ndarray, tuple]:
        """The step scaled by the server learning rate η."""
        return self.lr * _f64(step), state  # η Δ_t


@dataclass(frozen=True)
class TraceState:
    """Momentum buffer m (None until the first step, i.e. m_{-1} = 0)."""

    m: np.ndarray | None


@dataclass(frozen=True, kw_only=True)
class Momentum:
    """Server heavy-ball or Nesterov momentum (FedAvgM).

    Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated
    Visual Classification", 2019, Sec. 3.

    m_t = μ m_{t−1} + Δ_t   (Polyak, 1964; Sutskever et al., ICML 2013, eq. 1)
    s_t = η m_t, or with `nesterov` s_t = η (Δ_t + μ m_t) (Sutskever et al., ICML 2013,
    eq. 3–4, in the look-ahead form of Bengio, Boulanger-Lewandowski, Pascanu, ICASSP 2013, eq. 7).

    Args:
        lr: η, the server learning rate.
        momentum: μ.
        nesterov: Nesterov's accelerated step instead of heavy ball.
    """

    lr: float = bounded(1.0, gt=0.0, le=1e6)
    momentum: float = bounded(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    lr_key: ClassVar[str | None] = "lr"

    def init(self, params: np.ndarray) -> TraceState:
        """A zero momentum buffer m_0 = 0."""
        return TraceState(None)

    def update(self, step: np.ndarray, state: TraceState, params: np.ndarray) -> tuple[np.ndarray, TraceState]:
        """Heavy-ball (or Nesterov) step from the updated momentum buffer."""
        g = _f64(step)
        # m_{-1} = 0 gives m_0 = Δ_0 exactly (no 0·μ + Δ rounding of signed zeros)
        m = g if state.m is None or self.momentum == 0 else self.momentum * state.m + g  # m_t = μ m + Δ_t
        direction = g + self.momentum * m if self.nesterov else m
        return self.lr * direction, TraceState(m)  # s_t = η m_t  (or η (Δ_t + μ m_t))


# ---------------------------------------------------------------------------
# Adaptive steps (Reddi et al., ICLR 2021, Alg. 2)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MomentsState:
    """First and second moments m_t, v_t and the number of steps t taken."""

    count: int
    m: np.ndarray
    v: np.ndarray


def _moments_init(params: np.ndarray, v0: float) -> MomentsState:
    d = np.asarray(params).size
    return MomentsState(0, np.zeros(d), np.full(d, float(v0)))


def _first_moment(b1: float, m: np.ndarray, g: np.ndarray) -> np.ndarray:
    return b1 * m + (1.0 - b1) * g  # m_t = β1 m_{t−1} + (1 − β1) Δ_t  (Alg. 2, line 10)


def _adaptive_step(lr: float, m: np.ndarray, v: np.ndarray, tau: float) -> np.ndarray:
    return lr * m / (np.sqrt(v) + tau)  # x_{t+1} = x_t + η m_t / (√v_t + τ)  (Alg. 2, line 13)


@dataclass(frozen=True, kw_only=True)
class Adam:
    """FedAdam's server step (Reddi et al., ICLR 2021, Alg. 2, FEDADAM branch).

    m_t = β1 m_{t−1} + (1 − β1) Δ_t;  v_t = β2 v_{t−1} + (1 − β2) Δ_t²  (line 12, FEDADAM);
    s_t = η_t m_t / (√v_t + τ) with η_t = η (no bias correction, the paper), or the bias
    corrected η √(1−β2^t)/(1−β1^t) (`kingma`) or η √(1−β2^{t+1})/(1−β1^{t+1}) (`flower`).

    Args:
        lr: η, the server learning rate (Flower's default 0.1).
        b1: β1 (0.9).  b2: β2 (0.99).
        tau: τ, the adaptivity / numerical floor (Flower's default 1e-9).
        bias_correction: `none` (Reddi et al.), `kingma` or `flower` (see the module docstring).
        initial_accumulator: v_{-1}.
    """

    lr: float = bounded(0.1, gt=0.0, le=1e6)
    b1: float = bounded(0.9, ge=0.0, lt=1.0)
    b2: float = bounded(0.99, ge=0.0, lt=1.0)
    tau: float = bounded(1e-9, ge=0.0, le=1e6)
    bias_correction: Literal["none", "kingma", "flower"] = "none"
    initial_accumulator: float = bounded(0.0, ge=0.0, le=1e12)
    lr_key: ClassVar[str | None] = "lr"

    def init(self, params: np.ndarray) -> MomentsState:
        """Zero first moment, `initial_accumulator` second moment."""
        return _moments_init(params, self.initial_accumulator)

    def lr_at(self, t: int) -> float:
        """η_t for step t = 1, 2, ... (Kingma & Ba, ICLR 2015, Sec. 2, the α_t before Sec. 2.1)."""
        if self.bias_correction == "none":
            return self.lr
        k = t if self.bias_correction == "kingma" else t + 1
        return float(self.lr * np.sqrt(1.0 - self.b2 ** k) / (1.0 - self.b1 ** k))

    def update(self, step: np.ndarray, state: MomentsState, params: np.ndarray) -> tuple[np.ndarray, MomentsState]:
        """One adaptive step η m_t / (√v_t + τ) with Adam's second moment."""
        g = _f64(step)
        m = _first_moment(self.b1, state.m, g)
        v = self.b2 * state.v + (1.0 - self.b2) * g * g  # v_t = β2 v_{t−1} + (1 − β2) Δ_t²
        t = state.count + 1
        return _adaptive_step(self.lr_at(t), m, v, self.tau), MomentsState(t, m, v)


@dataclass(frozen=True, kw_only=True)
class Yogi:
    """FedYogi's server step (Reddi et al., ICLR 2021, Alg. 2, FEDYOGI branch).

    Yogi: Zaheer, Reddi, Sachan, Kale, Kumar, "Adaptive Methods for Nonconvex Optimization",
    NeurIPS 2018, Alg. 2.

    m_t = β1 m_{t−1} + (1 − β1) Δ_t;  v_t = v_{t−1} − (1 − β2) Δ_t² sign(v_{t−1} − Δ_t²);
    s_t = η m_t / (√v_t + τ).

    Args:
        lr: η (Flower's default 0.01).
        b1: β1 (0.9).  b2: β2 (0.99).
        tau: τ (Flower's default 1e-3).
        initial_accumulator: v_{-1}.
    """

    lr: float = bounded(0.01, gt=0.0, le=1e6)
    b1: float = bounded(0.9, ge=0.0, lt=1.0)
    b2: float = bounded(0.99, ge=0.0, lt=1.0)
    tau: float = bounded(1e-3, ge=0.0, le=1e6)
    initial_accumulator: float = bounded(0.0, ge=0.0, le=1e12)
    lr_key: ClassVar[str | None] = "lr"

    def init(self, params: np.ndarray) -> MomentsState:
        """Zero first moment, `initial_accumulator` second moment."""
        return _moments_init(params, self.initial_accumulator)

    def update(self, step: np.ndarray, state: MomentsState, params: np.ndarray) -> tuple[np.ndarray, MomentsState]:
        """One adaptive step η m_t / (√v_t + τ) with Yogi's sign-controlled second moment."""
        g = _f64(step)
        m = _first_moment(self.b1, state.m, g)
        g2 = g * g
        v = state.v - (1.0 - self.b2) * g2 * np.sign(state.v - g2)  # Yogi's additive v_t (line 12)
        return _adaptive_step(self.lr, m, v, self.tau), MomentsState(state.count + 1, m, v)


@dataclass(frozen=True, kw_only=True)
class Adagrad:
    """FedAdagrad's server step (Reddi et al., ICLR 2021, Alg. 2, FEDADAGRAD branch).

    m_t = β1 m_{t−1} + (1 − β1) Δ_t;  v_t = v_{t−1} + Δ_t²;  s_t = η m_t / (√v_t + τ).
    β1 = 0 (Flower's FedAdagrad) is plain Adagrad on the pseudo-gradient.

    Args:
        lr: η (Flower's default 0.1).
        b1: β1 (0 in Flower).
        tau: τ (Flower's default 1e-9).
        initial_accumulator: v_{-1}.
    """

    lr: float = bounded(0.1, gt=0.0, le=1e6)
    b1: float = bounded(0.0, ge=0.0, lt=1.0)
    tau: float = bounded(1e-9, ge=0.0, le=1e6)
    initial_accumulator: float = bounded(0.0, ge=0.0, le=1e12)
    lr_key: ClassVar[str | None] = "lr"

    def init(self, params: np.ndarray) -> MomentsState:
        """Zero first moment, `initial_accumulator` second moment."""
        return _moments_init(params, self.initial_accumulator)

    def update(self, step: np.ndarray, state: MomentsState, params: np.ndarray) -> tuple[np.ndarray, MomentsState]:
        """One adaptive step η m_t / (√v_t + τ) with Adagrad's accumulated second moment."""
        g = _f64(step)
        m = _first_moment(self.b1, state.m, g)
        v = state.v + g * g  # v_t = v_{t−1} + Δ_t²  (line 12, FEDADAGRAD)
        return _adaptive_step(self.lr, m, v, self.tau), MomentsState(state.count + 1, m, v)


# ---------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """Transformations applied left to right; the state is the tuple of their states."""

    parts: tuple[Any, ...]
    lr_key: ClassVar[str | None] = None

    def init(self, params: np.ndarray) -> tuple:
        """One state per part, in order."""
        return tuple(p.init(params) for p in self.parts)

    def update(self, step: np.ndarray, state: tuple, params: np.ndarray) -> tuple[np.ndarray, tuple]:
        """Each part's update applied in turn to the step."""
        new_states = []
        for part, s in zip(self.parts, state, strict=True):
            step, s = part.update(step, s, params)
            new_states.append(s)
        return step, tuple(new_states)


def chain(*parts: Any) -> Any:
    """Compose transformations (identities dropped); a single one is returned as it is."""
    kept = tuple(p for p in parts if not is_identity(p))
    if not kept:
        return Identity()
    return kept[0] if len(kept) == 1 else Chain(kept)


@dataclass(frozen=True, kw_only=True)
class Chained:
    """Several server optimisers applied in sequence (`chain`).

    Example: `server_opt: {name: chain, steps: [{name: momentum, momentum: 0.9}, {name: sgd, lr: 0.5}]}`.

    Args:
        steps: the transformations, applied left to right.
    """

    steps: tuple[Any, ...] = dataclasses.field(default=(), metadata={"family": "server_opt"})
    lr_key: ClassVar[str | None] = None

    def validate(self) -> None:
        """Refuse an empty chain or nested parts that cannot be chained."""
        from fedsim.scenario.fields import build_plugin

        # the items arrive as plain mappings; build each from the server_opt table
        built = tuple(s if dataclasses.is_dataclass(s) else build_plugin("server_opt", s, f"steps[{i}]")
                      for i, s in enumerate(self.steps))
        object.__setattr__(self, "steps", built)

    def _chain(self) -> Any:
        return chain(*self.steps)

    @property
    def has_lr(self) -> bool:
        """Whether any part scales the step by a learning rate of its own."""
        return any(has_lr(s) for s in self.steps)

    def init(self, params: np.ndarray) -> Any:
        """The chain's state (one per part)."""
        return self._chain().init(params)

    def update(self, step: np.ndarray, state: Any, params: np.ndarray) -> tuple[np.ndarray, Any]:
        """The chain's step and next state."""
        return self._chain().update(step, state, params)


def is_identity(opt: Any) -> bool:
    """True for the default (no server optimiser), and for chains of identities only."""
    if opt is None or getattr(opt, "identity", False):
        return True
    if isinstance(opt, Chained):
        return all(is_identity(s) for s in opt.steps)
    if isinstance(opt, Chain):
        return all(is_identity(s) for s in opt.parts)
    return False


def has_lr(opt: Any) -> bool:
    """Whether `opt` sets its own learning rate (so a strategy's `server_lr` would apply twice)."""
    if isinstance(opt, Chained):
        return opt.has_lr
    if isinstance(opt, Chain):
        return any(has_lr(p) for p in opt.parts)
    return getattr(opt, "lr_key", None) is not None


def has_momentum(opt: Any) -> bool:
    """Whether `opt` keeps a first moment (so a strategy's `server_momentum` would apply twice)."""
    parts: Sequence[Any] = opt.steps if isinstance(opt, Chained) else opt.parts if isinstance(opt, Chain) else (opt,)
    return any(isinstance(p, (Momentum, Adam, Yogi)) or (isinstance(p, Adagrad) and p.b1 > 0)
               or isinstance(p, (Chained, Chain)) and has_momentum(p) for p in parts)


# ---------------------------------------------------------------------------
# Legacy strategy keys and staleness, through the same transformations
# ---------------------------------------------------------------------------


def legacy(server_lr: float = 1.0, server_momentum: float = 0.0) -> Any:
    """The transformation a strategy's own `server_lr` / `server_momentum` keys stand for.

    Args:
        server_lr: η of the strategy block.
        server_momentum: μ of the strategy block (0 = none).

    Returns:
        `Momentum(lr=η, momentum=μ)` when μ > 0, else `Sgd(lr=η)`; the strategy applies it to
        its aggregate before the model is cast to float32, so results equal the former inline
        arithmetic bit for bit.
    """
    if server_momentum > 0:
        return Momentum(lr=server_lr, momentum=server_momentum)
    return Sgd(lr=server_lr)


def scaled(step: np.ndarray, lr: float) -> np.ndarray:
    """η Δ through `Sgd` (the stateless case of `legacy`)."""
    return Sgd(lr=lr).update(step, (), step)[0]


@dataclass(frozen=True, kw_only=True)
class StalenessDiscount:
    """The staleness weight s(τ) of an asynchronous update, shared by FedBuff and async FedAvg.

    Raw weights r(τ):
    constant: r = 1;
    polynomial: r = (1 + τ)^−a (Xie, Koyejo, Gupta, "Asynchronous Federated Optimization",
        2019, Sec. 5.2, s_a; with a = 0.5 it is FedBuff's 1/√(1 + τ), Nguyen et al.,
        AISTATS 2022, Sec. 5);
    hinge: r = 1 if τ ≤ b else 1/(1 + a(τ − b))  (Xie et al., 2019, Sec. 5.2, s_{a,b});
    threshold: r = 1 if τ ≤ b else `stale_value` (FLSim's ThresholdStalenessWeight).

    Two conventions for the normalising staleness τ̄ (`avg_staleness`):
    `fedsim` (the default): only `polynomial` is normalised, s = ((1 + τ̄)/(1 + τ))^a with
        τ̄ = 0 when unset, i.e. the paper's 1/√(1 + τ); the other kinds are r(τ) as they are
        (so τ̄ must stay unset with them: `FedBuff.validate` refuses it rather than ignore it);
    `flsim`: every kind is divided by its value at τ̄, s = r(τ)/r(τ̄), as FLSim's
        StalenessWeight.weight does, with FLSim's default τ̄ = 1 when unset (so its default
        polynomial weighs √(2/(1 + τ)), and `threshold` with τ̄ > b divides by `stale_value`).

    Args:
        kind: constant | polynomial | hinge | threshold.
        exponent: a.  cutoff: b.  stale_value: weight past the cutoff for `threshold`.
        avg_staleness: τ̄, the staleness at which s weighs 1 (None: 0 for `fedsim`, 1 for `flsim`).
        convention: `fedsim` or `flsim` (see above).
    """

    kind: str = "constant"
    exponent: float = 0.5
    cutoff: int = 0
    stale_value: float = 0.0
    avg_staleness: float | None = None
    convention: str = "fedsim"

    def raw(self, staleness: float) -> float:
        """r(τ), the unnormalised weight of `kind`."""
        if self.kind == "constant":
            return 1.0
        if self.kind == "polynomial":
            return float(1.0 / (1.0 + staleness) ** self.exponent)
        if self.kind == "hinge":
            return 1.0 if staleness <= self.cutoff else 1.0 / (1.0 + self.exponent * (staleness - self.cutoff))
        if self.kind == "threshold":
            return 1.0 if staleness <= self.cutoff else float(self.stale_value)
        raise ValueError(f"unknown staleness weighting {self.kind!r}")

    def weight(self, staleness: int) -> float:
        """s(τ) under the configured convention."""
        if self.convention == "flsim":
            avg = 1.0 if self.avg_staleness is None else self.avg_staleness
            return self.raw(staleness) / self.raw(avg)  # FLSim: r(τ) / r(τ̄)
        if self.convention != "fedsim":
            raise ValueError(f"unknown staleness convention {self.convention!r}")
        if self.kind == "polynomial":
            avg = 0.0 if self.avg_staleness is None else self.avg_staleness
            return float(((1.0 + avg) / (1.0 + staleness)) ** self.exponent)
        return self.raw(staleness)

    def init(self, params: np.ndarray) -> tuple:
        """No state."""
        return ()

    def update(self, step: np.ndarray, state: tuple, params: np.ndarray, *,
               staleness: int = 0) -> tuple[np.ndarray, tuple]:
        """s(τ) Δ for one update of staleness τ."""
        return self.weight(staleness) * _f64(step), state


def conflict(strategy: Any) -> tuple[str, str] | None:
    """A strategy key that `server_opt` would apply a second time, as (key, message).

    `server_lr` ≠ 1 (or async FedAvg's `alpha` ≠ 1 with `rule: delta`) with an optimiser that
    has its own learning rate, or `server_momentum` > 0 with one that keeps a first moment.

    Args:
        strategy: a strategy instance.

    Returns:
        None when the combination is fine.
    """
    opt = getattr(strategy, "server_opt", None)
    if is_identity(opt):
        return None
    from fedsim.scenario.fields import plugin_name

    name = plugin_name("server_opt", opt)
    lr = getattr(strategy, "server_lr", 1.0)
    if has_lr(opt) and lr != 1.0:
        return "server_lr", (f"server_lr = {lr:g} and server_opt {name!r} both scale the server step; "
                             "set the rate in server_opt and leave server_lr at 1")
    alpha = getattr(strategy, "alpha", 1.0)
    if has_lr(opt) and alpha != 1.0 and getattr(strategy, "rule", "delta") == "delta":
        return "alpha", (f"alpha = {alpha:g} and server_opt {name!r} both scale the server step; "
                         "set the rate in server_opt and leave alpha at 1")
    mu = getattr(strategy, "server_momentum", 0.0)
    if has_momentum(opt) and mu > 0:
        return "server_momentum", (f"server_momentum = {mu:g} and server_opt {name!r} both keep a momentum; "
                                   "use one of them")
    return None


# ---------------------------------------------------------------------------
# The engine's side
# ---------------------------------------------------------------------------


def server_step(opt: Any, state: Any, old: np.ndarray, new: np.ndarray) -> tuple[Any, np.ndarray]:
    """Commit through the server optimiser: Δ = new − old, x ← old + opt(Δ).

    Args:
        opt: the strategy's `server_opt` (never the identity: callers skip it).
        state: the optimiser's state.
        old: the model before this server step.
        new: the model the strategy's aggregation proposes.

    Returns:
        The optimiser's next state and the committed model, float64 (the engine casts).
    """
    base = _f64(old)
    step, state = opt.update(_f64(new) - base, state, base)
    return state, base + step


__all__ = [
    "Adagrad", "Adam", "Chain", "Chained", "Identity", "Momentum", "MomentsState", "Sgd", "StalenessDiscount",
    "TraceState", "Transformation", "Yogi", "chain", "conflict", "has_lr", "has_momentum", "is_identity", "legacy",
    "scaled", "server_opt_field", "server_step",
]
