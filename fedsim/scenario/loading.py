"""Scenario files: YAML → typed, frozen `Scenario`, validated before any data loads.

The only place YAML is read. Keys are dataclass fields; a block with `name:` picks a
plugin from its family's table. CLI overrides `a.b=value` are applied to the raw
mapping first. Errors name the file and the dotted path, with a did-you-mean.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import stat
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from fedsim.errors import ConfigError, ScenarioError
from fedsim.scenario import fields as config
from fedsim.scenario.schema import Scenario

MAX_FILE_BYTES = 1_000_000
MAX_ALIASES = 100


MAX_DEPTH = 32  # a real scenario is < 8 levels deep; bounds every recursive walk after parsing
MAX_NODES = 2_000_000  # values after alias expansion (a 1 MB file holds < 500k list items)

_FLOAT = re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF))$|^\.(?:nan|NaN|NAN)$""", re.X)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a number and rejects duplicate keys.

    YAML 1.2 reads `1e-3` as a float; PyYAML's 1.1 rules make it a string. A duplicate key is
    an error instead of silently keeping the last one.
    """

    def construct_mapping(self, node, deep=False):
        """Build a mapping, refusing duplicate or unhashable keys (`ConstructorError`)."""
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
    """Refuse parsed YAML that later walks (deepcopy, validation, dumping) could not handle.

    That is: nesting deeper than MAX_DEPTH, recursive aliases (an endless walk) and alias bombs
    (more than MAX_NODES values once aliases are expanded). Shared sub-trees are measured once,
    so the check itself is linear in the parsed size.

    Args:
        value: the parsed document.

    Raises:
        ScenarioError: naming the limit exceeded.
    """
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


def _read_bytes(path: Path) -> bytes:
    """At most MAX_FILE_BYTES + 1 bytes of a regular file.

    A FIFO would block `open()` and a device such as /dev/zero never ends, so anything that
    is not a regular file is refused from its metadata before it is opened.
    """
    st = path.stat()
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(path)
    if not stat.S_ISREG(st.st_mode):
        raise ScenarioError(f"{path}: not a regular file (a pipe, socket or device cannot hold a scenario)")
    if st.st_size > MAX_FILE_BYTES:
        raise ScenarioError(f"{path}: file is larger than {MAX_FILE_BYTES} bytes")
    with path.open("rb") as fh:
        return fh.read(MAX_FILE_BYTES + 1)  # the file may grow after stat()


def _read_yaml(path: Path) -> Any:
    try:
        raw_bytes = _read_bytes(path)
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
    """Apply CLI `a.b=value` overrides (values parsed as YAML) to a copy of `raw`.

    Setting a plugin's `name` to a different plugin drops the old plugin's other keys (with a
    note on stderr).

    Args:
        raw: the parsed scenario document.
        overrides: `key.path=value` strings, applied in order.

    Returns:
        The overridden copy.

    Raises:
        ConfigError: for a malformed override or a key inside a non-mapping.
    """
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
    system = raw.get("system")
    comp = system.get("compute") if isinstance(system, dict) else None  # a device trace file
    if isinstance(comp, dict) and isinstance(comp.get("path"), str) and not Path(comp["path"]).is_absolute():
        candidate = base / comp["path"]
        if candidate.exists():
            comp["path"] = str(candidate)
    data = raw.get("data")
    ds = data.get("dataset") if isinstance(data, dict) else None
    if isinstance(ds, dict) and isinstance(ds.get("path"), str) and not Path(ds["path"]).is_absolute():
        candidate = base / ds["path"]
        if candidate.exists():
            ds["path"] = str(candidate)


def from_mapping(raw: Mapping[str, Any], source: str = "<scenario>") -> Scenario:
    """Build and validate a scenario from plain values (a parsed YAML document).

    Args:
        raw: the document; relative data paths are taken as they are.
        source: prefix for error messages (the file name).

    Returns:
        The validated scenario, with every default filled in.

    Raises:
        ScenarioError: one line, `source: key: problem`.
    """
    try:
        check_shape(raw)
        return config.build(Scenario, raw, "")
    except ScenarioError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    except ConfigError as exc:  # one line per problem, each naming the file
        raise ScenarioError("\n".join(f"{source}: {line}" for line in str(exc).splitlines())) from None
    except RecursionError:
        raise ScenarioError(f"{source}: scenario nested too deeply") from None


def load(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Load, override and validate a scenario file.

    Args:
        path: the YAML file; relative data and trace paths are resolved against its folder.
        overrides: `key.path=value` strings applied before validation (as `--set` on the CLI).

    Returns:
        The validated scenario.

    Raises:
        ScenarioError: one line, naming the file and the key.
    """
    path = Path(path)
    raw = _read_yaml(path)
    try:
        raw = apply_overrides(raw, overrides)
    except ConfigError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    _resolve_paths(raw, path.parent)
    return from_mapping(raw, str(path))


def to_yaml(scenario: Scenario) -> str:
    """Dump a scenario with every default written out (the `scenario.resolved.yaml` of a run)."""
    raw = config.to_raw(scenario)
    return yaml.safe_dump(raw, sort_keys=False, default_flow_style=None)


def replace(scenario: Scenario, **changes: Any) -> Scenario:
    """A copy of `scenario` with top-level fields replaced (no re-validation)."""
    return dataclasses.replace(scenario, **changes)
