"""Scenario files: YAML → typed, frozen `Scenario`, validated before any data loads.

The only place YAML is read. Keys are dataclass fields; a block with `name:` picks a
plugin from its family's table. CLI overrides `a.b=value` are applied to the raw
mapping first. Errors name the file and the dotted path, with a did-you-mean.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from fedsim import config
from fedsim.channel import ChannelConfig
from fedsim.client import ClientConfig
from fedsim.checkpoint import CheckpointConfig
from fedsim.config import ConfigError, bounded, plugin
from fedsim.data import HardClients
from fedsim.faults import FaultsConfig
from fedsim.robust import ValidationConfig
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
    "robust": _table("fedsim.robust", "ROBUST"),
})


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Args:
    dataset: which data (see `fedsim list datasets`).
    partition: how a pooled dataset is split across clients (`natural` for per-client data).
    num_clients: N.
    test_fraction: share of each client's data kept as its local test split (fairness).
    hard_clients: optionally make some clients' data harder (label noise, feature noise, a
        negated input domain); unset = nobody.
    """

    dataset: Any = plugin("dataset")
    partition: Any = plugin("partition", {"name": "iid"})
    num_clients: int = bounded(10, ge=1, le=10_000_000)
    test_fraction: float = bounded(0.2, ge=0.0, lt=1.0)
    hard_clients: HardClients | None = None


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
    client_state: precision of stored per-client strategy state (`float16` halves its
        memory; see fedsim.client_state).
    redispatch: async — `sample`: a freed slot goes at once to a uniformly drawn online idle
        client; `on_commit`: a client whose update arrived restarts from the next committed
        model (Fraboni et al.'s schedules). See docs/explanation-virtual-clock.md.
    drop_offline: async — a job whose client goes offline before its upload arrives is dropped
        (at the slot boundary where it goes offline).
    clock: async — `virtual`: the system model fixes when each update arrives (reproducible);
        `wall`: updates are committed in the order real clients return them, times are wall
        seconds since the start (`fedsim deploy server` sets it; see docs/how-to-deploy.md).
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
    client_state: Literal["float32", "float16"] = "float32"
    redispatch: Literal["sample", "on_commit"] = "sample"
    drop_offline: bool = False
    clock: Literal["virtual", "wall"] = "virtual"

    def validate(self) -> None:
        if self.clock == "wall" and self.mode != "async":
            raise ConfigError("clock", "the wall clock is implemented for engine.mode async only")
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
    client_metrics: per-client rows in clients.jsonl at each evaluation: `all` (true),
        `participants` (clients that have taken part so far) or `none` (false).
    client_sample: per-client evaluation (clients.jsonl accuracy/loss and the fairness
        metrics) on a fixed random sample of this many clients; unset = every client.
    """

    eval_every: int | None = bounded(None, ge=1, le=1_000_000_000)
    eval_every_time: float | None = bounded(None, gt=0.0)
    client_metrics: bool | Literal["all", "participants", "none"] = True
    client_sample: int | None = bounded(None, ge=1, le=10_000_000)


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """A whole experiment. See docs/reference-scenario.md for every key.

    Args:
        name: label of the experiment; runs go to runs/<name>/<time>/ unless --out is given.
        seed: root seed; every random stream derives from it and stable ids (client, dispatch).
    """

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
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    robust: Any = plugin("robust", {"name": "none"})
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> None:
        from fedsim.datasets import LinearRegression, Synthetic
        from fedsim.models import Linear
        from fedsim.partition import Natural
        from fedsim.strategy import modes

        if not self.name or self.name.startswith(".") or any(c in self.name for c in "/\\\0") \
                or len(self.name) > 200:
            raise ConfigError("name", f"{self.name!r} cannot name a results folder (no '/', '\\', "
                              "leading '.', at most 200 characters)")
        if self.engine.mode == "async" and config.plugin_name("robust", self.robust) != "none":
            raise ConfigError("robust.name", "robust aggregation needs a cohort (engine.mode: sync)")
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


MAX_DEPTH = 32  # a real scenario is < 8 levels deep; bounds every recursive walk after parsing
MAX_NODES = 2_000_000  # values after alias expansion (a 1 MB file holds < 500k list items)

_FLOAT = re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF))$|^\.(?:nan|NaN|NAN)$""", re.X)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a number (YAML 1.2; PyYAML's 1.1 rules make it a
    string) and rejects duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "unhashable key", key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_mapping)


def _parse(text: str) -> Any:
    """YAML text -> plain values; raises yaml.YAMLError, ScenarioError or RecursionError."""
    # One streaming pass over the events first: stops at the first excess, so a deeply
    # nested or alias-heavy document is refused before PyYAML builds (or chokes on) it.
    aliases = depth = 0
    for ev in yaml.parse(text, Loader=_Loader):
        if isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ScenarioError(f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
        elif isinstance(ev, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise ScenarioError(f"too many YAML aliases (more than {MAX_ALIASES})")
    return yaml.load(text, Loader=_Loader)  # noqa: S506 — _Loader is a SafeLoader


def check_shape(value: Any) -> None:
    """Refuse structures that would make later walks (deepcopy, validation, dumping) recurse
    too deep, loop forever (recursive aliases) or expand exponentially (alias bombs).
    Shared sub-trees are measured once, so the check itself is linear in the parsed size."""
    memo: dict[int, tuple[int, int]] = {}  # id -> (expanded size, height)
    on_path: set[int] = set()

    def walk(obj: Any, depth: int) -> tuple[int, int]:
        if not isinstance(obj, (dict, list)):
            return 1, 0
        if depth >= MAX_DEPTH:
            raise ScenarioError(f"nested more than {MAX_DEPTH} levels deep")
        key = id(obj)
        if key in on_path:
            raise ScenarioError("recursive YAML alias (a value contains itself)")
        if key in memo:
            size, height = memo[key]
        else:
            on_path.add(key)
            size, height = 1, 0
            for child in (obj.values() if isinstance(obj, dict) else obj):
                s, h = walk(child, depth + 1)
                size, height = size + s, max(height, h + 1)
                if size > MAX_NODES:
                    raise ScenarioError(f"expands to more than {MAX_NODES:,} values (YAML alias bomb?)")
            on_path.discard(key)
            memo[key] = size, height
        if depth + height > MAX_DEPTH:
            raise ScenarioError(f"nested more than {MAX_DEPTH} levels deep")
        return size, height

    walk(value, 0)


def _read_yaml(path: Path) -> Any:
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise ScenarioError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ScenarioError(f"{path}: is a directory, not a scenario file") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw_bytes) > MAX_FILE_BYTES:
        raise ScenarioError(f"{path}: file is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = _parse(text)
        check_shape(data)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{path}{where}: invalid YAML ({' '.join(str(problem).split())})") from None
    except (RecursionError, MemoryError):
        raise ScenarioError(f"{path}: YAML nested too deeply or too large") from None
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
            value = _parse(text) if text.strip() else ""
            check_shape(value)
        except ScenarioError as exc:
            raise ConfigError(key, f"override value: {exc}") from None
        except (yaml.YAMLError, RecursionError):
            value = text  # not YAML: keep the plain string (the field's type check reports it)
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
        if len(parts) > 1 and last == "name" and node.get("name") not in (None, value):  # a new plugin
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
        check_shape(raw)
        return config.build(Scenario, raw, "")
    except ScenarioError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
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
