"""fedsim: a deterministic federated-learning simulator with a virtual clock.

The public API is small and lazy: importing `fedsim` loads nothing heavy, and each name
below imports its module on first use (so `fedsim.load_scenario` never loads torch).

    import fedsim
    sc = fedsim.load_scenario("scenarios/quickstart.yaml", ["engine.rounds=5"])
    result = fedsim.run(sc, out="runs/try")
    fedsim.check_strategy(MyStrategy)      # one-line ContractError if the contract is broken
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("fedsim")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# public name -> "module:attribute", imported on first access (PEP 562)
_LAZY = {
    "load_scenario": "fedsim.scenario.loading:load",
    "run": "fedsim.runner:run",
    "check_strategy": "fedsim.strategy.contracts:check_strategy",
    "Scenario": "fedsim.scenario.schema:Scenario",
    "RunResult": "fedsim.runner:RunResult",
}

__all__ = ["RunResult", "Scenario", "__version__", "check_strategy", "load_scenario", "run"]

if TYPE_CHECKING:
    from fedsim.runner import RunResult, run
    from fedsim.scenario.loading import load as load_scenario
    from fedsim.scenario.schema import Scenario
    from fedsim.strategy.contracts import check_strategy


def __getattr__(name: str) -> Any:
    """Import a public name on first access.

    Args:
        name: one of `__all__`.

    Returns:
        The function or class it names.

    Raises:
        AttributeError: `name` is not part of the public API.
    """
    if name not in _LAZY:
        raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
    module, _, attr = _LAZY[name].partition(":")
    value = getattr(import_module(module), attr)
    globals()[name] = value  # cache: later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
