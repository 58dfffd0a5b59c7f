from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from fedsim.types import Params


@runtime_checkable
class Strategy(Protocol):
    """Minimal structural type every strategy satisfies."""

    def init(self, params: Params, num_clients: int) -> Any: ...


def supports_sync(strategy: object) -> bool:
    return callable(getattr(strategy, "aggregate", None))


def supports_async(strategy: object) -> bool:
    return callable(getattr(strategy, "receive", None)) or callable(getattr(strategy, "tick", None))


def modes(strategy: object) -> tuple[str, ...]:
    out = []
    if supports_sync(strategy):
        out.append("sync")
    if supports_async(strategy):
        out.append("async")
    return tuple(out)


def strategy_problems(cls: type) -> list[str]:
    """Why `cls` is not a usable strategy (empty when it is)."""
    problems = []
    if not callable(getattr(cls, "init", None)):
        problems.append("has no init(params, num_clients) method")
    if not modes(cls):
        problems.append("has neither aggregate (sync) nor receive/tick (async)")
    return problems
