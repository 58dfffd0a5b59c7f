"""Who is online when — the participation process, unknown to the server.

A plugin (frozen dataclass) builds a stateful process for one run; the engine calls
`process.online(step, time)` once per round (sync) or per participation slot (async),
with increasing `step`, and gets a boolean mask over all N clients. `process.probs` is
each client's long-run online probability (None for traces) — known to the simulator
and to oracle baselines only, never to the server. Everything is vectorised over clients.

Per-client probabilities (`probs:`) are an explicit list or a plugin from `PROBS`:
constant, uniform, dirichlet_over_labels (the FedAU paper's label-correlated p_n).

References:
    S. Wang and M. Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in
    Federated Averaging", ICLR 2024 — the Bernoulli, Markovian and cyclic participation
    patterns of its experiments, as implemented in the official code (IBM/fedau,
    `util/util.py`: `WorkerSampler`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import numpy as np

from fedsim.errors import ConfigError
from fedsim.scenario.fields import bounded, plugin
from fedsim.world import traces


@dataclass(frozen=True)
class Context:
    """What a participation model may look at when it is set up."""

    num_clients: int
    rng: np.random.Generator  # drives the process over time
    prob_rng: np.random.Generator  # draws per-client probabilities once
    label_histograms: Callable[[], np.ndarray]  # (N, C), computed on demand


# --- per-client probability models -------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ConstantProb:
    """p_n = p for every client."""

    p: float = bounded(0.5, gt=0.0, le=1.0)

    def probabilities(self, ctx: Context) -> np.ndarray:
        """Return the (N,) array of the constant probability `p`."""
        return np.full(ctx.num_clients, self.p)


@dataclass(frozen=True, kw_only=True)
class UniformProb:
    """p_n ~ U(low, high), drawn once per run.

    The default U(0.05, 0.9) is the spread of the project's FedAU bias check on quadratics.
    """

    low: float = bounded(0.05, gt=0.0, le=1.0)
    high: float = bounded(0.9, gt=0.0, le=1.0)

    def validate(self) -> None:
        """Reject an empty interval.

        Raises:
            ValueError: if `low > high`.
        """
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")

    def probabilities(self, ctx: Context) -> np.ndarray:
        """Return (N,) probabilities drawn i.i.d. from U(low, high) with `ctx.prob_rng`."""
        return ctx.prob_rng.uniform(self.low, self.high, size=ctx.num_clients)


@dataclass(frozen=True, kw_only=True)
class DirichletOverLabels:
    """FedAU's label-correlated probabilities: clients rich in "favoured" labels participate more.

    m ~ Dir(α_p·1_C) is drawn once, then p_n = max(p_min, C · p_mean · Σ_c π̂_n(c) m(c)), capped at 1,
    where π̂_n is client n's measured label histogram.

    Args:
        mean: p_mean (0.1 in the paper).  min: p_min (0.02).  alpha: α_p (0.1).

    References:
        Wang & Ji, ICLR 2024 (see the module docstring), experimental setup; the formula is the
        one in the official code (IBM/fedau, `util/util.py`, participation-probability
        generation with `-participation-dirichlet-alpha`, `-participation-prob-mean`,
        `-participation-prob-min`).
    """

    mean: float = bounded(0.1, gt=0.0, le=1.0)
    min: float = bounded(0.02, gt=0.0, le=1.0)
    alpha: float = bounded(0.1, gt=0.0)

    def probabilities(self, ctx: Context) -> np.ndarray:
        """Return (N,) probabilities from the clients' measured label histograms π̂ (N, C)."""
        hist = ctx.label_histograms()
        c = hist.shape[1]
        m = ctx.prob_rng.dirichlet(np.full(c, self.alpha))
        return np.clip(c * self.mean * hist @ m, self.min, 1.0)




def _check_probs_length(probs: Any, num_clients: int) -> list[str]:
    if isinstance(probs, tuple) and len(probs) != num_clients:
        return [f"probs: has {len(probs)} entries but data.num_clients is {num_clients}"]
    return []


def _resolve_probs(probs: Any, ctx: Context, path: str = "participation.probs") -> np.ndarray:
    if isinstance(probs, tuple):
        p = np.asarray(probs, dtype=np.float64)
        if len(p) != ctx.num_clients:
            raise ValueError(f"{path}: has {len(p)} entries but data.num_clients is {ctx.num_clients}")
        if np.any(p <= 0) or np.any(p > 1):
            raise ValueError(f"{path}: every probability must be in (0, 1]")
        return p
    return np.asarray(probs.probabilities(ctx), dtype=np.float64)


# --- processes ---------------------------------------------------------------------------


class _Bernoulli:
    def __init__(self, p: np.ndarray, rng: np.random.Generator):
        self.p, self.rng = p, rng
        self.probs = p

    def online(self, step: int, time: float) -> np.ndarray:
        return self.rng.random(len(self.p)) < self.p


class _Markov:
    """Two-state chain with stationary P(active) = p_n.

    P(off→on) = a, P(on→off) = a(1/p_n − 1), both divided by the latter when it exceeds 1
    (IBM/fedau `WorkerSampler`, `markov-a`). The state is updated before it is read.
    """

    def __init__(self, p: np.ndarray, a: float, rng: np.random.Generator):
        self.rng = rng
        self.probs = p
        up = np.full(len(p), a)
        down = a * (1.0 / p - 1.0)
        big = down > 1.0
        up[big] = a / down[big]  # rescale so that down <= 1, stationary mean unchanged
        down[big] = 1.0
        self.up, self.down = up, down
        self.state = rng.random(len(p)) < p  # initial state ~ Bernoulli(p)

    def online(self, step: int, time: float) -> np.ndarray:
        u = self.rng.random(len(self.state))
        # update before read: active stays active w.p. 1 - down, inactive wakes w.p. up
        self.state = np.where(self.state, u >= self.down, u < self.up)
        return self.state.copy()


class _Cyclic:
    """A_n = max(1, round(L p_n)) active rounds, then B_n = max(1, L - A_n) inactive, repeated.

    Clients start inactive at a random phase (IBM/fedau `WorkerSampler`, `cyclic-L`).
    """

    def __init__(self, p: np.ndarray, period: int, rng: np.random.Generator):
        self.on = np.maximum(1, np.round(period * p)).astype(np.int64)
        self.off = np.maximum(1, period - self.on)
        self.probs = self.on / (self.on + self.off)  # exact long-run frequency
        self.active = np.zeros(len(p), dtype=bool)  # start inactive, random phase
        self.remaining = (rng.random(len(p)) * self.off).astype(np.int64)

    def online(self, step: int, time: float) -> np.ndarray:
        switch = self.remaining == 0
        self.active = np.where(switch, ~self.active, self.active)
        self.remaining = np.where(switch, np.where(self.active, self.on, self.off), self.remaining) - 1
        return self.active.copy()


# --- plugins -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Full:
    """Every client, every round."""

    def process(self, ctx: Context):
        """Return a process whose mask is all True at every step."""
        return _Const(np.ones(ctx.num_clients, dtype=bool))


class _Const:
    def __init__(self, mask: np.ndarray):
        self.mask = mask
        self.probs = mask.astype(np.float64)

    def online(self, step: int, time: float) -> np.ndarray:
        return self.mask.copy()


@dataclass(frozen=True, kw_only=True)
class UniformSample:
    """Exactly `k` clients drawn uniformly without replacement each round."""

    k: int = bounded(10, ge=1, le=10_000_000)

    def check_clients(self, num_clients: int) -> list[str]:
        """Problems with `num_clients` registered clients, found before any data is built."""
        return [f"k: {self.k} is larger than data.num_clients ({num_clients})"] if self.k > num_clients else []

    def process(self, ctx: Context):
        """Return a process drawing a fresh uniform k-subset at every step.

        Raises:
            ValueError: if `k` exceeds the number of clients.
        """
        if self.k > ctx.num_clients:
            raise ValueError(f"participation.k ({self.k}) is larger than data.num_clients ({ctx.num_clients})")
        return _UniformK(ctx.num_clients, self.k, ctx.rng)


class _UniformK:
    def __init__(self, n: int, k: int, rng: np.random.Generator):
        self.n, self.k, self.rng = n, k, rng
        self.probs = np.full(n, k / n)

    def online(self, step: int, time: float) -> np.ndarray:
        mask = np.zeros(self.n, dtype=bool)
        mask[self.rng.choice(self.n, self.k, replace=False)] = True
        return mask


@dataclass(frozen=True, kw_only=True)
class Bernoulli:
    """I_n^t ~ Bernoulli(p_n), independent over clients and rounds.

    Args:
        probs: a list of N probabilities, or {name: constant|uniform|dirichlet_over_labels, ...}.
    """

    probs: tuple[float, ...] | Any = plugin("probs", {"name": "constant", "p": 0.5})

    def check_clients(self, num_clients: int) -> list[str]:
        """Problems with `num_clients` registered clients, found before any data is built."""
        return _check_probs_length(self.probs, num_clients)

    def process(self, ctx: Context):
        """Return a process with independent Bernoulli(p_n) draws per client and step."""
        return _Bernoulli(_resolve_probs(self.probs, ctx), ctx.rng)


@dataclass(frozen=True, kw_only=True)
class Markov:
    """Markov on/off with stationary probability p_n (FedAU's `markov-a`).

    Args:
        probs: p_n (see bernoulli).  a: P(inactive → active) before rescaling (0.05 in the paper).
    """

    probs: tuple[float, ...] | Any = plugin("probs", {"name": "constant", "p": 0.5})
    a: float = bounded(0.05, gt=0.0, le=1.0)

    def check_clients(self, num_clients: int) -> list[str]:
        """Problems with `num_clients` registered clients, found before any data is built."""
        return _check_probs_length(self.probs, num_clients)

    def process(self, ctx: Context):
        """Return the two-state chain, its initial state drawn from Bernoulli(p_n)."""
        return _Markov(_resolve_probs(self.probs, ctx), self.a, ctx.rng)


@dataclass(frozen=True, kw_only=True)
class Cyclic:
    """Deterministic cycles: round(L p_n) rounds on, the rest of L off (FedAU's `cyclic-L`).

    Args:
        probs: p_n (see bernoulli).  period: L (100 in the paper).
    """

    probs: tuple[float, ...] | Any = plugin("probs", {"name": "constant", "p": 0.5})
    period: int = bounded(100, ge=2, le=10_000_000)

    def check_clients(self, num_clients: int) -> list[str]:
        """Problems with `num_clients` registered clients, found before any data is built."""
        return _check_probs_length(self.probs, num_clients)

    def process(self, ctx: Context):
        """Return the deterministic on/off cycle with a random starting phase per client."""
        return _Cyclic(_resolve_probs(self.probs, ctx), self.period, ctx.rng)


@dataclass(frozen=True, kw_only=True)
class Trace:
    """Replay availability from a CSV file, in virtual time or (sync runs) by round.

    `by: time` (the default): columns client,start,end in virtual time; a client is online at
    time t when start <= t < end for one of its rows.
    `by: round` (engine.mode: sync): columns client,round (online in that 0-based round) or
    client,start,end in rounds (online in rounds start <= r < end), so a scenario can say
    exactly who takes part in which round.

    Args:
        path: the CSV file (relative paths are resolved against the scenario file's folder).
        by: `time` or `round` (see above).

    Example:
        participation: {name: trace, path: rounds.csv, by: round}
    """

    path: str
    by: Literal["time", "round"] = "time"

    def load(self, num_clients: int) -> np.ndarray:
        """Read and check the trace file.

        Args:
            num_clients: N; every `client` value must lie in 0..N-1.

        Returns:
            (R, 3) float array of (client, start, end) rows, in file order (a `round` row r
            is read as start r, end r + 1).

        Raises:
            ValueError: if the file is missing, not UTF-8 CSV, lacks a column or has a bad row.
        """
        p = Path(self.path)
        if not p.is_file():
            raise ValueError(f"participation.path: trace file not found: {self.path}")
        try:
            return self._read(p, num_clients)
        except UnicodeDecodeError as exc:
            raise ValueError(f"participation.path: {self.path}: not UTF-8 text (byte {exc.start})") from None
        except csv.Error as exc:
            raise ValueError(f"participation.path: {self.path}: not a CSV file ({exc})") from None

    def _read(self, p: Path, num_clients: int) -> np.ndarray:
        rows = []
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            names = set(reader.fieldnames or [])
            by_round = self.by == "round" and "round" in names
            need = {"client", "round"} if by_round else {"client", "start", "end"}
            missing = need - names
            if missing:
                alt = " (or client,round)" if self.by == "round" else ""
                raise ValueError(f"participation.path: {self.path} lacks column(s) {sorted(missing)}{alt}")
            for line, row in enumerate(reader, start=2):
                try:
                    c = int(row["client"])
                    if by_round:
                        s = float(int(row["round"]))
                        e = s + 1.0
                    else:
                        s, e = float(row["start"]), float(row["end"])
                except (TypeError, ValueError):
                    raise ValueError(f"participation.path: {self.path}:{line}: bad row {row}") from None
                if not 0 <= c < num_clients:
                    raise ValueError(f"participation.path: {self.path}:{line}: client {c} is not in "
                                     f"0..{num_clients - 1}")
                if not e > s:
                    raise ValueError(f"participation.path: {self.path}:{line}: end must be > start")
                rows.append((c, s, e))
        return np.array(rows, dtype=np.float64).reshape(-1, 3)

    def process(self, ctx: Context):
        """Return a process that is online where a row covers the virtual time (or the round)."""
        return _Trace(self.load(ctx.num_clients), ctx.num_clients, self.by == "round")


class _Trace:
    def __init__(self, rows: np.ndarray, n: int, by_round: bool = False):
        self.client = rows[:, 0].astype(np.int64)
        self.start, self.end, self.n = rows[:, 1], rows[:, 2], n
        self.by_round = by_round
        self.probs = None  # not a stationary process with known p_n

    def online(self, step: int, time: float) -> np.ndarray:
        mask = np.zeros(self.n, dtype=bool)
        at = float(step) if self.by_round else time  # sync: step is the 0-based round
        live = (self.start <= at) & (at < self.end)
        mask[self.client[live]] = True
        return mask




@dataclass(frozen=True, kw_only=True)
class FedScaleTrace:
    """Availability from a FedScale behaviour trace: online when active[j] <= t mod finish_time <= inactive[j].

    The file is fedsim's availability JSONL (one object per client with FedScale's fields
    `active`, `inactive`, `finish_time`; docs/traces.md) or FedScale's `client_behave_trace`
    pickle (read safely). Client k is online at virtual time t when some interval j of its trace
    entry has active[j] <= t mod finish_time <= inactive[j], both ends included, as in FedScale
    (client_metadata.py `ClientMetadata.is_active`). Sync runs ask at each round's start, async
    runs at every `engine.slot` boundary. FedScale answers with a cursor that moves at most one
    interval per query; fedsim checks every interval, so a sparse query never misses one.

    Args:
        path: the availability trace (relative paths are resolved against the scenario file's folder).
        mapping: which trace entry each client gets: `fedscale` (client k is FedScale's id k + 1 and
            gets the entry at position (k + 1) mod L in file order, client_manager.py
            `register_client`), `order` (position k mod L) or `sample` (uniform draws, once, from
            the run's probs stream).
        k: at most this many online clients take part in a round (sync) or slot (async), drawn
            uniformly without replacement as FedScale's random selector does; unset = all online.

    Example:
        participation: {name: fedscale_trace, path: availability.jsonl}
    """

    path: str
    mapping: Literal["fedscale", "order", "sample"] = "fedscale"
    k: int | None = bounded(None, ge=1, le=10_000_000)
    time_based: ClassVar[bool] = True  # `available_to(client, t)` answers for any t: sync `engine.drop_offline`

    def validate(self) -> None:
        """Read and check the trace file now, so that a bad file stops before any data loads.

        Raises:
            ConfigError: for `path`, one line naming the file (and the line of a bad JSONL line).
        """
        try:
            traces.cached(self.path, "behave")
        except ValueError as exc:
            raise ConfigError("path", str(exc)) from None

    def process(self, ctx: Context):
        """Return the interval process of the mapped trace entries (the mapping drawn from `ctx.prob_rng`)."""
        arrays = traces.behave_arrays(traces.cached(self.path, "behave"), ctx.num_clients, self.mapping,
                                      ctx.prob_rng)
        return _Intervals(*arrays, ctx.num_clients, self.k, ctx.rng)


class _Intervals:
    """Stateless look-up of periodic intervals (every interval checked at every query)."""

    def __init__(self, finish: np.ndarray, owner: np.ndarray, active: np.ndarray, inactive: np.ndarray,
                 n: int, k: int | None, rng: np.random.Generator):
        self.finish, self.owner, self.active, self.inactive = finish, owner, active, inactive
        self.n, self.k, self.rng = n, k, rng
        self.probs = None  # the server never knows; no stationary p_n is claimed
        # each client's intervals as one slice of owner-sorted arrays, for `available_to`
        order = np.argsort(owner, kind="stable")
        self._by_client = (active[order], inactive[order],
                           np.searchsorted(owner[order], np.arange(n + 1), side="left"))

    def available(self, time: float) -> np.ndarray:
        """Which clients the trace has online at virtual time `time` (no sampling)."""
        norm = np.mod(float(time), self.finish)[self.owner]
        live = (self.active <= norm) & (norm <= self.inactive)
        mask = np.zeros(self.n, dtype=bool)
        mask[self.owner[live]] = True
        return mask

    def available_to(self, client: int, time: float) -> bool:
        """Whether `client` alone is online at `time` (the same rule as `available`, one client's intervals)."""
        active, inactive, starts = self._by_client
        lo, hi = int(starts[client]), int(starts[client + 1])
        norm = np.mod(float(time), self.finish[client])
        return bool(np.any((active[lo:hi] <= norm) & (norm <= inactive[lo:hi])))

    def online(self, step: int, time: float) -> np.ndarray:
        mask = self.available(time)
        if self.k is not None:
            on = np.flatnonzero(mask)
            if len(on) > self.k:
                mask[:] = False
                mask[self.rng.choice(on, self.k, replace=False)] = True
        return mask
