"""Every error fedsim raises on purpose, in one place.

Each one's `str()` is a single line meant for the user: it names what was wrong and where
(scenario path and dotted key, client id, run folder). The CLI prints it and exits 2.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A scenario value is wrong. `path` is the dotted location, e.g. `data.num_clients`."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class ConfigErrors(ConfigError):
    """Several independent problems of one scenario, reported together (one line each).

    A user then fixes them in one pass instead of one rerun per mistake.
    """

    def __init__(self, errors: list[ConfigError]):
        flat: list[ConfigError] = []
        for e in errors:
            flat.extend(e.errors if isinstance(e, ConfigErrors) else [e])
        self.errors = flat
        super().__init__(flat[0].path, flat[0].message)
        self.args = ("\n".join(str(e) for e in flat),)

    def __str__(self) -> str:
        return self.args[0]


class ScenarioError(Exception):
    """A scenario cannot be used; str() is one line naming the file and the dotted path."""


class ContractError(TypeError):
    """A strategy class breaks the strategy contract (fedsim.check_strategy).

    str() is one line naming the class and every problem, e.g. a misspelt hook with a
    did-you-mean.
    """


class Stalled(RuntimeError):
    """The run cannot go on: every busy client waits for a commit that cannot come."""


class RunError(Exception):
    """A run could not start; str() is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # third-party messages may span lines


class RunDataError(Exception):
    """A run folder is missing, incomplete or corrupt; str() is one line."""


class PlotError(RunDataError):
    """A plot cannot be drawn from these runs; str() is one line."""


class SweepError(ValueError):
    """Bad sweep arguments; str() is one line."""


__all__ = ["ConfigError", "ConfigErrors", "ContractError", "PlotError", "RunDataError", "RunError",
           "ScenarioError", "Stalled", "SweepError"]
