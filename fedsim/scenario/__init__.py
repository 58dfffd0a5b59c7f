"""Scenarios: YAML in, a typed and frozen `Scenario` out (torch-free).

`loading` reads and validates files, `fields` turns YAML values into dataclasses with
errors that name the dotted path, `schema` holds every fixed configuration block.
"""

from fedsim.errors import ConfigError, ScenarioError
from fedsim.scenario.loading import (
           apply_overrides,
           check_shape,
           from_mapping,
           load,
           replace,
           to_yaml,
)
from fedsim.scenario.schema import Scenario

__all__ = ["ConfigError", "Scenario", "ScenarioError", "apply_overrides", "check_shape", "from_mapping",
           "load", "replace", "to_yaml"]
