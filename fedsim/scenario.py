"""Scenario files: YAML → typed, frozen `Scenario`, validated before any data loads.

The only place YAML is read. Keys are dataclass fields; a block with `name:` picks a
plugin from its family's table. CLI overrides `a.b=value` are applied to the raw
mapping first. Errors name the file and the dotted path, with a did-you-mean.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from fedsim import config
from fedsim.channel import ChannelConfig
from fedsim.client import ClientConfig
from fedsim.config import ConfigError, bounded, plugin
from fedsim.system import SystemConfig

MAX_FILE_BYTES = 1_000_000
MAX_ALIASES = 100


def _strategies():
    from strategies import STRATEGIES

    return STRATEGIES


def _executors():
    from fedsim.executors import EXECUTORS

    return EXECUTORS


def _table(module: str, attr: str):
    def get():
        import importlib

        return getattr(importlib.import_module(module), attr)

    return get


config.FAMILIES.update({
    "dataset": _table("fedsim.datasets", "DATASETS"),
    "partition": _table("fedsim.partition", "PARTITIONERS"),
    "model": _table("fedsim.models", "MODELS"),
    "participation": _table("fedsim.participation", "MODELS"),
    "probs": _table("fedsim.participation", "PROBS"),
    "compute": _table("fedsim.system", "COMPUTE"),
    "strategy": _strategies,
    "executor": _executors,
})


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Args:
    dataset: which data (see `fedsim list datasets`).
    partition: how a pooled dataset is split across clients (`natural` for per-client data).
    num_clients: N.
    test_fraction: share of each client's data kept as its local test split (fairness).
    """

    dataset: Any = plugin("dataset")
    partition: Any = plugin("partition", {"name": "iid"})
    num_clients: int = bounded(10, ge=1, le=10_000_000)
    test_fraction: float = bounded(0.2, ge=0.0, lt=1.0)


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Args:
    mode: `sync` rounds or `async` arrivals on the virtual clock.
    rounds: sync rounds to run.
    deadline: sync only — clients still running this many virtual seconds after the round
        started are dropped (unset = wait for the slowest).
    empty_round_time: virtual seconds a round lasts when nobody takes part.
    concurrency: async — jobs in flight.
    max_versions / max_time / max_updates: async stop conditions (first reached wins).
    slot: async — participation is redrawn every `slot` virtual seconds.
    redispatch: async — `sample`: a freed slot goes at once to a uniformly drawn online idle
        client; `on_commit`: a client whose update arrived restarts from the next committed
        model (Fraboni et al.'s schedules). See docs/explanation-virtual-clock.md.
    drop_offline: async — a job whose client goes offline before its upload arrives is dropped
        (at the slot boundary where it goes offline).
    """

    mode: Literal["sync", "async"] = "sync"
    rounds: int = bounded(100, ge=1, le=100_000_000)
    deadline: float | None = bounded(None, gt=0.0)
    empty_round_time: float = bounded(1.0, gt=0.0)
    concurrency: int = bounded(10, ge=1, le=10_000_000)
    max_versions: int | None = bounded(None, ge=1, le=1_000_000_000)
    max_time: float | None = bounded(None, gt=0.0)
    max_updates: int | None = bounded(None, ge=1, le=1_000_000_000)
    slot: float = bounded(1.0, gt=0.0)
    redispatch: Literal["sample", "on_commit"] = "sample"
    drop_offline: bool = False

    def validate(self) -> None:
        if self.mode == "async" and self.max_versions is None and self.max_time is None \
                and self.max_updates is None:
            raise ConfigError("max_versions", "async mode needs a stop condition: set max_versions, "
                              "max_time or max_updates")


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """Args:
    eval_every: evaluate every this many rounds (sync) or versions (async); unset = every
        round / version, except in async runs that set eval_every_time.
    eval_every_time: async — evaluate every this many virtual seconds.
    client_metrics: write per-client rows to clients.jsonl at each evaluation.
    """

    eval_every: int | None = bounded(None, ge=1, le=1_000_000_000)
    eval_every_time: float | None = bounded(None, gt=0.0)
    client_metrics: bool = True


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """A whole experiment. See docs/reference-scenario.md for every key."""

    name: str = "scenario"
    seed: int = bounded(0, ge=0, le=2**63 - 1)
    data: DataConfig
    model: Any = plugin("model", {"name": "mlp"})
    client: ClientConfig = field(default_factory=ClientConfig)
    participation: Any = plugin("participation", {"name": "full"})
    system: SystemConfig = field(default_factory=SystemConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    strategy: Any = plugin("strategy", {"name": "fedavg"})
    executor: Any = plugin("executor", {"name": "inline"})
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def validate(self) -> None:
        from fedsim.datasets import LinearRegression, Synthetic
        from fedsim.models import Linear
        from fedsim.partition import Natural
        from fedsim.strategy import modes

        supported = modes(self.strategy)
        if self.engine.mode not in supported:
            raise ConfigError("engine.mode", f"strategy {config.plugin_name('strategy', self.strategy)!r} "
                              f"runs in {'/'.join(supported) or 'no'} mode, not {self.engine.mode!r}")
        per_client = isinstance(self.data.dataset, (Synthetic, LinearRegression))
        natural = isinstance(self.data.partition, Natural)
        if per_client and not natural:
            raise ConfigError("data.partition.name", f"dataset {config.plugin_name('dataset', self.data.dataset)!r}"
                              " is generated per client: use partition {name: natural}")
        if natural and not per_client:
            raise ConfigError("data.partition.name", "'natural' needs a per-client dataset "
                              "(synthetic, linear_regression)")
        regression = isinstance(self.data.dataset, LinearRegression)
        if regression != isinstance(self.model, Linear):
            raise ConfigError("model.name", "linear_regression data needs model 'linear' (and 'linear' "
                              "needs linear_regression data)")


class ScenarioError(Exception):
    """A scenario cannot be used; str() is one line naming the file and the dotted path."""


def _read_yaml(path: Path) -> Any:
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise ScenarioError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ScenarioError(f"{path}: is a directory, not a scenario file") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read ({exc.strerror})") from None
    if len(raw_bytes) > MAX_FILE_BYTES:
        raise ScenarioError(f"{path}: file is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        aliases = sum(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text, Loader=yaml.SafeLoader))
        if aliases > MAX_ALIASES:
            raise ScenarioError(f"{path}: too many YAML aliases ({aliases} > {MAX_ALIASES})")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{path}{where}: invalid YAML ({problem})") from None
    except RecursionError:
        raise ScenarioError(f"{path}: YAML nested too deeply") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: top level must be a mapping of scenario keys, got {type(data).__name__}")
    return data


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply CLI `a.b=value` overrides (values parsed as YAML) to a copy of `raw`."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(key or item, f"override {item!r} is not of the form key.path=value")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {} if nxt is None else nxt
                if not isinstance(nxt, dict):
                    raise ConfigError(key, f"cannot set a key inside {part!r}, which is not a mapping")
                node[part] = nxt
            node = nxt
        last = parts[-1]
        if last == "name" and isinstance(node, dict) and node.get("name") not in (None, value):
            dropped = [k for k in node if k != "name"]
            if dropped:
                print(f"note: {key}={value} drops the old plugin's keys: {', '.join(dropped)}", file=sys.stderr)
            node.clear()
        node[last] = value
    return out


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make file paths in the scenario relative to the scenario file's folder."""
    part = raw.get("participation")
    if isinstance(part, dict) and isinstance(part.get("path"), str) and not Path(part["path"]).is_absolute():
        candidate = base / part["path"]
        if candidate.exists():
            part["path"] = str(candidate)
    data = raw.get("data")
    ds = data.get("dataset") if isinstance(data, dict) else None
    if isinstance(ds, dict) and isinstance(ds.get("path"), str) and not Path(ds["path"]).is_absolute():
        candidate = base / ds["path"]
        if candidate.exists():
            ds["path"] = str(candidate)


def from_mapping(raw: Mapping[str, Any], source: str = "<scenario>") -> Scenario:
    try:
        return config.build(Scenario, raw, "")
    except ConfigError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    except RecursionError:
        raise ScenarioError(f"{source}: scenario nested too deeply") from None


def load(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Load, override and validate a scenario file. Raises ScenarioError (one line)."""
    path = Path(path)
    raw = _read_yaml(path)
    try:
        raw = apply_overrides(raw, overrides)
    except ConfigError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    _resolve_paths(raw, path.parent)
    return from_mapping(raw, str(path))


def to_yaml(scenario: Scenario) -> str:
    raw = config.to_raw(scenario)
    return yaml.safe_dump(raw, sort_keys=False, default_flow_style=None)


def replace(scenario: Scenario, **changes: Any) -> Scenario:
    return dataclasses.replace(scenario, **changes)
