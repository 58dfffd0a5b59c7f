"""The strategy contract: declared capabilities, the hooks each mode needs, and `check_strategy`.

`check_strategy` turns every breach of the contract into a one-line `ContractError`.

A strategy is a frozen dataclass whose fields are its hyperparameters. It declares its
capabilities as class attributes (right after the class docstring):

    modes: ClassVar[tuple[str, ...]] = ("sync",)       # "sync" and/or "async"
    uses_oracle: ClassVar[bool] = False                 # init(..., oracle=...) gets the Oracle
    sends: ClassVar[Literal["delta", "model"]] = "delta"  # what ClientUpdate.vector holds
    down_type: ClassVar[type | None] = None             # frozen dataclass configure() returns
    up_type: ClassVar[type | None] = None               # frozen dataclass client_update() sends
    secure_sum: ClassVar[bool] = False                  # aggregate needs only a weighted sum (secagg)

Optional: `client_state_type: ClassVar[type | None]`, the frozen dataclass a client rule
keeps as its per-client state when that state is a dataclass (so the Flower codec can
rebuild it without pickle); plain arrays and tuples need no declaration.
`secure_sum = True` declares that `aggregate` depends on the cohort only through the weighted
mean Σ w_i Δ_i / Σ w_i that clients can compute before masking, with w_i = n_i when the
strategy's `weighting` is `examples` and 1 when it is `uniform`: aggregating the single pooled
update (that mean, num_examples = Σ w_i) gives the same model as aggregating the cohort. Only
such strategies run under secure aggregation (fedsim.pipeline.secagg), which shows the server
the sum alone; the declaration needs `sends = "delta"`, no `up_type` and a `weighting`.
`uses_oracle` may instead be a property when it depends on the hyperparameters (FedFix).
The hooks are the methods of the protocols below; a public name that is neither a hook,
a capability nor a dataclass field is an error (a misspelt `client_updat` would otherwise
silently leave the default local SGD in place). The idea follows Gymnasium's environment
checker, `gymnasium.utils.env_checker.check_env` (Towers et al., "Gymnasium: A Standard
Interface for Reinforcement Learning Environments", arXiv:2407.17032, 2024): catch
interface mistakes once, at load time, with a readable message, instead of as wrong
numbers later.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import typing
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from fedsim.errors import ContractError
from fedsim.types import ArrivalInfo, ClientTask, ClientUpdate, Params, RoundInfo

MODES = ("sync", "async")
SENDS = ("delta", "model")
# Declared capabilities and the value an out-of-tree class that omits one gets.
CAPABILITIES: dict[str, Any] = {"uses_oracle": False, "sends": "delta", "down_type": None, "up_type": None,
                                "client_state_type": None, "secure_sum": False}
# hook -> number of positional arguments after self (`validate()` is the config-block check
# that fedsim.scenario.fields runs after building the strategy; `check_clients(num_clients)`
# the check against the number of clients that `fedsim validate` runs, see `ChecksClients`)
HOOKS: dict[str, int] = {"init": 2, "aggregate": 4, "receive": 4, "tick": 3, "configure": 3,
                         "client_update": 3, "client_report": 1, "validate": 0, "check_clients": 1}
# public names a strategy class may carry besides its hooks and dataclass fields
# (`weighting` may be a class attribute of a secure_sum strategy that has no such field)
KNOWN = frozenset(HOOKS) | frozenset(CAPABILITIES) | {"modes", "commit_interval", "weighting"}
# field types that travel in a typed message (fedsim.flower.codec encodes exactly these)
MESSAGE_TYPES = (np.ndarray, float, int, bool, str)


@runtime_checkable
class Strategy(Protocol):
    """What every strategy has: an `init` and its declared modes."""

    modes: ClassVar[tuple[str, ...]]

    def init(self, params: Params, num_clients: int) -> Any:
        """Build the server state before the first round.

        Args:
            params: the initial global model (flat float32); never mutated.
            num_clients: N, every registered client.

        Returns:
            The strategy's server state, threaded through every later call.
        """
        ...


@runtime_checkable
class SyncStrategy(Protocol):
    """A strategy that runs synchronous rounds (`modes` contains "sync")."""

    def init(self, params: Params, num_clients: int) -> Any:
        """Build the server state (see `Strategy.init`).

        Args:
            params: the initial global model.
            num_clients: N.

        Returns:
            The server state.
        """
        ...

    def aggregate(self, state: Any, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[Any, Params]:
        """Combine one round's accepted updates into the next global model.

        Args:
            state: the server state from the previous call (never mutated).
            params: the current global model (never mutated).
            updates: the round's accepted updates, in arrival order (possibly empty).
            info: the round number, N, the dispatched clients and the virtual time.

        Returns:
            (new server state, new global model).
        """
        ...


@runtime_checkable
class AsyncStrategy(Protocol):
    """A strategy that consumes asynchronous arrivals one by one (`modes` contains "async")."""

    def init(self, params: Params, num_clients: int) -> Any:
        """Build the server state (see `Strategy.init`).

        Args:
            params: the initial global model.
            num_clients: N.

        Returns:
            The server state.
        """
        ...

    def receive(self, state: Any, params: Params, update: ClientUpdate,
                info: ArrivalInfo) -> tuple[Any, Params | None]:
        """Take one accepted arrival.

        Args:
            state: the server state (never mutated).
            params: the current global model (never mutated).
            update: the arrived update.
            info: server version, virtual time, N, staleness and the update's start model.

        Returns:
            (new server state, new global model, or None when this arrival does not commit).
        """
        ...


@runtime_checkable
class TimedStrategy(Protocol):
    """An asynchronous strategy that commits on a virtual-time timer (FedFix)."""

    commit_interval: float

    def init(self, params: Params, num_clients: int) -> Any:
        """Build the server state (see `Strategy.init`).

        Args:
            params: the initial global model.
            num_clients: N.

        Returns:
            The server state.
        """
        ...

    def receive(self, state: Any, params: Params, update: ClientUpdate,
                info: ArrivalInfo) -> tuple[Any, Params | None]:
        """Buffer one arrival (see `AsyncStrategy.receive`).

        Args:
            state: the server state.
            params: the current global model.
            update: the arrived update.
            info: the arrival's context.

        Returns:
            (new server state, new global model or None).
        """
        ...

    def tick(self, state: Any, params: Params, info: ArrivalInfo) -> tuple[Any, Params | None]:
        """Commit at virtual time k·commit_interval, whatever has arrived.

        Args:
            state: the server state.
            params: the current global model.
            info: server version and virtual time of the tick (no update).

        Returns:
            (new server state, new global model or None).
        """
        ...


@runtime_checkable
class ClientRule(Protocol):
    """A strategy whose clients do something other than plain local SGD."""

    def client_update(self, task: ClientTask, trainer: Any, client_state: Any) -> tuple[ClientUpdate, Any]:
        """Run one client job.

        Args:
            task: the job: received model, version, round, seed and `task.down`, the
                strategy's down message (an instance of `down_type`, or None).
            trainer: a `fedsim.training.runtime.LocalTrainer` for this client.
            client_state: what this client returned last time (None at first), kept by the engine.

        Returns:
            (the update, with `up` an instance of `up_type` or None, and `kind` equal
            to the strategy's `sends`; the client's new state).
        """
        ...


@runtime_checkable
class ChecksClients(Protocol):
    """Optional: a strategy whose hyperparameters can be wrong for a number of clients.

    `Scenario.validate` (so `fedsim validate`) calls it with `data.num_clients` before any
    data is built, so that such a mistake is one line at validation rather than an error
    from `init` after the dataset has been generated.
    """

    def check_clients(self, num_clients: int) -> list[str]:
        """The problems of these hyperparameters with `num_clients` registered clients.

        Args:
            num_clients: N, `data.num_clients`.

        Returns:
            One "key: what is wrong" message per problem (empty when none); `key` is a field
            of the strategy, reported as `strategy.key`.
        """
        ...


# -- declared capabilities -----------------------------------------------------------------

def declared(strategy: object, name: str) -> Any:
    """A declared capability of a strategy (instance or class), or its documented default.

    Args:
        strategy: a strategy instance or class.
        name: one of `CAPABILITIES`.

    Returns:
        The declared value (an instance property is evaluated), else the default.
    """
    return getattr(strategy, name, CAPABILITIES[name])


def hook(strategy: object, name: str) -> Any:
    """The bound hook `name` of `strategy`, or None when the strategy does not define it.

    Args:
        strategy: a strategy instance.
        name: a hook name from `HOOKS` (misspellings are refused by `check_strategy`).

    Returns:
        The callable, or None.
    """
    if name not in HOOKS:
        raise KeyError(f"{name!r} is not a strategy hook")
    fn = getattr(strategy, name, None)
    return fn if callable(fn) else None


def modes(strategy: object) -> tuple[str, ...]:
    """The modes a strategy declares, in canonical order ("sync" before "async").

    Args:
        strategy: a strategy instance or class.

    Returns:
        The declared modes that fedsim knows (empty when none is declared).
    """
    declared_modes = getattr(strategy, "modes", ())
    if not isinstance(declared_modes, (tuple, list, frozenset, set)):
        return ()
    return tuple(m for m in MODES if m in declared_modes)


def supports_sync(strategy: object) -> bool:
    """Whether the strategy declares the "sync" mode.

    Args:
        strategy: a strategy instance or class.

    Returns:
        True when it runs synchronous rounds.
    """
    return "sync" in modes(strategy)


def supports_async(strategy: object) -> bool:
    """Whether the strategy declares the "async" mode.

    Args:
        strategy: a strategy instance or class.

    Returns:
        True when it consumes asynchronous arrivals.
    """
    return "async" in modes(strategy)


# -- typed messages ------------------------------------------------------------------------

def message_arrays(message: Any) -> dict[str, Any]:
    """The ndarray-typed fields of a down/up message, by name (values as sent, whatever they are).

    Args:
        message: a message dataclass instance, or None.

    Returns:
        {field name: value} for every field declared (or found) as an ndarray.
    """
    if message is None or not dataclasses.is_dataclass(message):
        return {}
    hints = _hints(type(message)) or {}
    return {f.name: getattr(message, f.name) for f in dataclasses.fields(message)
            if hints.get(f.name) is np.ndarray or isinstance(getattr(message, f.name), np.ndarray)}


def message_nbytes(message: Any) -> int:
    """Bytes of the arrays a message carries (what `bytes_up` counts beside the vector).

    Args:
        message: a message dataclass instance, or None.

    Returns:
        The summed `nbytes` of its ndarray fields.
    """
    return sum(v.nbytes for v in message_arrays(message).values() if isinstance(v, np.ndarray))


def _hints(tp: type) -> dict[str, Any] | None:
    try:
        return typing.get_type_hints(tp)
    except Exception:  # noqa: BLE001 — an unresolvable annotation is reported by the checker
        return None


# -- the checker ---------------------------------------------------------------------------

def strategy_problems(cls: type) -> list[str]:
    """Why `cls` is not a usable strategy class (empty when it is).

    Args:
        cls: a candidate strategy class.

    Returns:
        One short sentence per problem.
    """
    if not isinstance(cls, type):
        return [f"is a {type(cls).__name__}, not a class"]
    if not dataclasses.is_dataclass(cls):  # not a strategy at all: name checks would only add noise
        return _dataclass_problems(cls) + _mode_problems(cls)
    problems = _dataclass_problems(cls) + _name_problems(cls)
    problems += _mode_problems(cls) + _capability_problems(cls) + _arity_problems(cls)
    return problems


def check_strategy(cls: type) -> type:
    """Raise a one-line `ContractError` unless `cls` satisfies the strategy contract.

    Checks: a frozen dataclass constructible from its defaults; `modes` declared, non-empty
    and known, with the hooks each mode needs (sync: aggregate; async: receive; tick needs
    commit_interval); no unknown public name (with a did-you-mean); hook arities;
    configure iff down_type; typed message fields; `sends` valid; uses_oracle ⇒ init
    accepts `oracle`; secure_sum ⇒ delta, no up_type, a weighting.

    Args:
        cls: a candidate strategy class.

    Returns:
        `cls` unchanged, so the call can wrap a class definition.

    Raises:
        ContractError: with every problem found, on one line.
    """
    problems = strategy_problems(cls)
    if problems:
        name = getattr(cls, "__qualname__", repr(cls))
        raise ContractError(f"{getattr(cls, '__module__', '?')}.{name}: {'; '.join(problems)}")
    return cls


def _dataclass_problems(cls: type) -> list[str]:
    if not dataclasses.is_dataclass(cls):
        return ["is not a dataclass (strategies are frozen dataclasses of their hyperparameters)"]
    out = []
    if not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        out.append("is a dataclass but not frozen (use @dataclass(frozen=True))")
    try:
        cls()
    except Exception as exc:  # noqa: BLE001 — any failure is a contract breach
        out.append(f"cannot be built from its defaults ({type(exc).__name__}: {' '.join(str(exc).split())})")
    return out


def _public_names(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or klass is typing.Generic:
            continue
        names |= {n for n in vars(klass) if not n.startswith("_")}
    return names


def _name_problems(cls: type) -> list[str]:
    fields = {f.name for f in dataclasses.fields(cls)}
    out = []
    for name in sorted(_public_names(cls) - KNOWN - fields):
        close = difflib.get_close_matches(name, sorted(KNOWN), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else " (make helpers private or module functions)"
        out.append(f"unknown public attribute {name!r}{hint}")
    return out


def _has(cls: type, name: str) -> bool:
    return callable(getattr(cls, name, None))


def _mode_problems(cls: type) -> list[str]:
    declared_modes = getattr(cls, "modes", None)
    if declared_modes is None:
        return ['declares no modes (add modes: ClassVar[tuple[str, ...]] = ("sync",) and/or "async")']
    if not isinstance(declared_modes, tuple) or not declared_modes:
        return [f"modes must be a non-empty tuple, got {declared_modes!r}"]
    out = [f"unknown mode {m!r} (known: sync, async)" for m in declared_modes if m not in MODES]
    if not _has(cls, "init"):
        out.append("has no init(params, num_clients)")
    if "sync" in declared_modes and not _has(cls, "aggregate"):
        out.append("declares mode 'sync' but has no aggregate(state, params, updates, info)")
    if "async" in declared_modes and not _has(cls, "receive"):
        out.append("declares mode 'async' but has no receive(state, params, update, info)")
    if "sync" not in declared_modes and _has(cls, "aggregate"):
        out.append("has aggregate but does not declare mode 'sync'")
    if "async" not in declared_modes and (_has(cls, "receive") or _has(cls, "tick")):
        out.append("has receive/tick but does not declare mode 'async'")
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    if _has(cls, "tick") and "commit_interval" not in fields and not hasattr(cls, "commit_interval"):
        out.append("has tick but no commit_interval (the timer period)")
    return out


def _capability_problems(cls: type) -> list[str]:
    out = []
    sends = getattr(cls, "sends", CAPABILITIES["sends"])
    if sends not in SENDS:
        out.append(f"sends must be 'delta' or 'model', got {sends!r}")
    elif sends == "model" and not _has(cls, "client_update"):
        out.append("sends a model but has no client_update (the default client sends a delta)")
    oracle = inspect.getattr_static(cls, "uses_oracle", False)
    if not isinstance(oracle, (bool, property)):
        out.append(f"uses_oracle must be a bool or a property, got {oracle!r}")
    elif oracle and _has(cls, "init") and not _accepts_keyword(cls.init, "oracle"):
        out.append("uses_oracle is set but init does not accept oracle=")
    down, up = getattr(cls, "down_type", None), getattr(cls, "up_type", None)
    if (down is not None) != _has(cls, "configure"):
        out.append("has configure but no down_type" if down is None else "has a down_type but no configure")
    if up is not None and not _has(cls, "client_update"):
        out.append("has an up_type but no client_update to send it")
    state = getattr(cls, "client_state_type", None)
    if state is not None and not _has(cls, "client_update"):
        out.append("has a client_state_type but no client_update to keep it")
    out += _secure_sum_problems(cls)
    for label, tp in (("down_type", down), ("up_type", up), ("client_state_type", state)):
        if tp is not None:
            out += _message_problems(label, tp)
    return out


def _secure_sum_problems(cls: type) -> list[str]:
    """What is wrong with a `secure_sum` declaration (see the module docstring)."""
    flag = inspect.getattr_static(cls, "secure_sum", False)
    if not isinstance(flag, bool):
        return [f"secure_sum must be a bool, got {flag!r}"]
    if not flag:
        return []
    out = []
    if getattr(cls, "sends", CAPABILITIES["sends"]) != "delta":
        out.append("secure_sum needs sends 'delta' (the secure sum is a weighted mean of deltas)")
    if getattr(cls, "up_type", None) is not None:
        out.append("secure_sum cannot go with an up_type (its fields would not be summed)")
    if getattr(cls, "weighting", None) not in ("examples", "uniform"):
        out.append("secure_sum needs a weighting of 'examples' or 'uniform' (the clients' weights)")
    return out


def _message_problems(label: str, tp: Any) -> list[str]:
    if not (isinstance(tp, type) and dataclasses.is_dataclass(tp) and tp.__dataclass_params__.frozen):
        return [f"{label} must be a frozen dataclass, got {tp!r}"]
    hints = _hints(tp)
    if hints is None:
        return [f"{label} {tp.__name__} has annotations that do not resolve"]
    out = []
    for f in dataclasses.fields(tp):
        if hints.get(f.name) not in MESSAGE_TYPES:
            out.append(f"{label} {tp.__name__}.{f.name} must be typed np.ndarray, float, int, bool or str, "
                       f"got {hints.get(f.name)!r}")
    return out


def _positional_ok(fn: Any, n: int) -> bool:
    """Whether `fn(self, a_1, ..., a_n)` binds.

    True when n is within the positional parameters' range and no keyword-only parameter
    lacks a default (and for callables whose signature cannot be read).
    """
    try:
        params = list(inspect.signature(fn).parameters.values())[1:]  # drop self
    except (TypeError, ValueError):
        return True  # builtins and the like: nothing to check
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is p.empty for p in positional)
    most = n if any(p.kind is p.VAR_POSITIONAL for p in params) else len(positional)
    kw_required = any(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in params)
    return required <= n <= most and not kw_required


def _accepts_keyword(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _arity_problems(cls: type) -> list[str]:
    out = []
    for name, n in HOOKS.items():
        fn = inspect.getattr_static(cls, name, None)
        if fn is None:
            continue
        if not callable(fn) or isinstance(fn, (staticmethod, classmethod)):
            out.append(f"{name} must be a plain method")
        elif not _positional_ok(fn, n):
            out.append(f"{name} must take {n} argument(s) after self, signature is {inspect.signature(fn)}")
    return out


__all__ = [
    "CAPABILITIES",
    "HOOKS",
    "AsyncStrategy",
    "ChecksClients",
    "ClientRule",
    "Strategy",
    "SyncStrategy",
    "TimedStrategy",
    "check_strategy",
    "declared",
    "hook",
    "message_arrays",
    "message_nbytes",
    "modes",
    "strategy_problems",
    "supports_async",
    "supports_sync",
]
