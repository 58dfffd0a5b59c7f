"""Build frozen dataclasses from plain YAML values, with errors that name the dotted path.

One mechanism for every config block: dataclass fields are the YAML keys; a field whose
metadata names a `family` is a plugin choice (`{name: ..., other keys}`) looked up in
that family's table. Unknown keys, wrong types and out-of-range values raise
`ConfigError` with the path and, for names, a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import MISSING, field
from typing import Any, Literal, Mapping

from fedsim import registry
from fedsim.errors import ConfigError, ConfigErrors

_MAX_INT = 10**12  # larger integers are never a sensible simulation setting




def bounded(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, doc: str = "") -> Any:
    """A dataclass field with numeric bounds checked at load time.

    Args:
        default: the default value; a list or dict default is copied for every instance.
        ge: inclusive lower bound.
        gt: exclusive lower bound.
        le: inclusive upper bound.
        lt: exclusive upper bound.
        doc: one-line description for the generated reference (else the class docstring's).

    Returns:
        A `dataclasses.field` whose metadata carries the bounds (read by `coerce`).
    """
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt).items() if v is not None}
    if doc:
        meta["doc"] = doc
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def plugin(family: str, default: Mapping[str, Any] | None = None, doc: str = "") -> Any:
    """A dataclass field holding a plugin chosen by `name` from `family`'s table.

    Args:
        family: a key of `fedsim.registry.FAMILIES`.
        default: the plugin block used when the key is absent (`{name: ..., ...}`); None
            makes the field required.
        doc: one-line description for the generated reference.

    Returns:
        A `dataclasses.field`; a default is built fresh for every instance.
    """
    meta = {"family": family, "doc": doc}
    if default is None:
        return field(metadata=meta)
    return field(default_factory=lambda: build_plugin(family, dict(default), ""), metadata=meta)


def _suggest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false"}.get(
            tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def _check_bounds(value: Any, meta: Mapping[str, Any], path: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if "ge" in meta and not value >= meta["ge"]:
        raise ConfigError(path, f"must be >= {meta['ge']}, got {value}")
    if "gt" in meta and not value > meta["gt"]:
        raise ConfigError(path, f"must be > {meta['gt']}, got {value}")
    if "le" in meta and not value <= meta["le"]:
        raise ConfigError(path, f"must be <= {meta['le']}, got {value}")
    if "lt" in meta and not value < meta["lt"]:
        raise ConfigError(path, f"must be < {meta['lt']}, got {value}")


def coerce(tp: Any, value: Any, path: str, meta: Mapping[str, Any] | None = None) -> Any:
    """Check `value` against the annotation `tp` and return the typed value.

    Handles Any, unions/Optional, Literal, lists and tuples, mappings, nested dataclasses,
    bool, int, float and str, plus plugin blocks (`meta["family"]`) and numeric bounds.

    Args:
        tp: the field's type annotation.
        value: the plain YAML value.
        path: dotted location of the value, for error messages.
        meta: the field's metadata (bounds, `family`); None = none.

    Returns:
        The value converted to `tp` (e.g. an int given for a float becomes a float).

    Raises:
        ConfigError: the value does not fit the type or the bounds.
    """
    meta = meta or {}
    if "family" in meta and isinstance(value, Mapping):
        return build_plugin(meta["family"], value, path)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            if arg is Any and "family" in meta:
                continue  # the plugin alternative: only a {name: ...} mapping, handled above
            try:
                return coerce(arg, value, path, meta)
            except ConfigError as exc:
                errors.append(exc)
        if "family" in meta:
            if isinstance(value, (list, tuple)) and len(errors) == 1:
                raise errors[0]  # e.g. `probs[1]: must be a finite number`
            raise ConfigError(path, f"expected a list of numbers or a {{name: ...}} block, got {value!r}")
        raise errors[0] if len(errors) == 1 else ConfigError(
            path, f"expected one of {', '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, f"must be one of {list(args)}, got {value!r}{_suggest(value, map(str, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        if len(value) > 1_000_000:
            raise ConfigError(path, "list is too long (more than 1,000,000 items)")
        item_tp = args[0] if args else Any
        items = [coerce(item_tp, v, f"{path}[{i}]", {k: m for k, m in meta.items() if k != "family"})
                 for i, v in enumerate(value)]
        return tuple(items)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): coerce(val_tp, v, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping of {_field_names(tp)}, got {value!r}")
        return build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_INT:
                value = int(value)
            else:
                raise ConfigError(path, f"expected an integer, got {value!r}")
        if abs(value) > _MAX_INT:
            raise ConfigError(path, f"integer {value} is too large")
        _check_bounds(value, meta, path)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(path, f"must be a finite number, got {value!r}")
        _check_bounds(value, meta, path)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    raise ConfigError(path, f"unsupported field type {tp!r}")  # a bug in fedsim, not the scenario


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def build(cls: type, raw: Mapping[str, Any], path: str = "") -> Any:
    """Instantiate dataclass `cls` from mapping `raw`, checking every key and value.

    Every bad key of the block is reported at once; the class's own `validate()` (if any)
    runs after the fields are fine, its errors prefixed with `path`.

    Args:
        cls: a dataclass.
        raw: the block's mapping.
        path: dotted location of the block, for error messages.

    Returns:
        The instance.

    Raises:
        ConfigError: one problem (unknown or missing key, bad value, failed validation).
        ConfigErrors: several.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(path, f"expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    errors: list[ConfigError] = []  # every bad key of this block, not just the first
    for key, value in raw.items():
        if not isinstance(key, str) or key not in fields:
            errors.append(ConfigError(_join(path, str(key)), f"unknown key{_suggest(key, fields)}; "
                                      f"valid keys: {', '.join(fields) or '(none)'}"))
            continue
        f = fields[key]
        try:
            if ("family" in f.metadata and isinstance(value, Mapping) and "name" not in value
                    and f.default_factory is not MISSING):
                # `strategy: {server_lr: 0.5}` keeps the default plugin and sets one of its keys
                value = {"name": plugin_name(f.metadata["family"], f.default_factory()), **value}
            kwargs[key] = coerce(hints[key], value, _join(path, key), f.metadata)
        except ConfigError as exc:
            errors.append(exc)
    for name, f in fields.items():
        if name not in raw and f.default is MISSING and f.default_factory is MISSING:
            errors.append(ConfigError(_join(path, name), "is required"))
    if errors:  # cross-field checks (validate) need every field: they run once these are fixed
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(path, str(exc)) from None
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigErrors as exc:
            raise ConfigErrors([ConfigError(_join(path, e.path), e.message) for e in exc.errors]) from None
        except ConfigError as exc:
            raise ConfigError(_join(path, exc.path), exc.message) from None
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from None
    return obj


def build_plugin(family: str, raw: Mapping[str, Any], path: str) -> Any:
    """Build the plugin named by `raw['name']` from `family`'s registry table (or `module:Class`).

    Args:
        family: a key of `fedsim.registry.FAMILIES`.
        raw: the block's mapping, `name` plus the plugin's own keys.
        path: dotted location of the block, for error messages.

    Returns:
        The plugin's frozen dataclass instance.

    Raises:
        ConfigError: unknown name, unimportable plugin, or a bad key or value.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(path, f"expected a {{name: ...}} block, got {raw!r}")
    known = registry.names(family)
    if "name" not in raw:
        raise ConfigError(_join(path, "name"), f"is required (one of: {', '.join(sorted(known))})")
    name = raw["name"]
    if not isinstance(name, str):
        raise ConfigError(_join(path, "name"), f"expected a string, got {name!r}")
    if name in known:
        cls = registry.load(family, name)
    elif ":" in name:  # out-of-tree plugin, e.g. "mylab.fedfoo:FedFoo"
        try:
            cls = registry.import_entry(name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(_join(path, "name"), f"cannot import {name!r}: {exc}") from None
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ConfigError(_join(path, "name"), f"{name!r} is not a {family} plugin (a dataclass), "
                              f"got {type(cls).__name__}")
        checker = registry.CHECKS.get(family)  # e.g. fedsim.check_strategy's findings
        problems = registry.import_entry(checker)(cls) if checker else []
        if problems:
            raise ConfigError(_join(path, "name"), f"{name!r}: {'; '.join(problems)}")
    else:
        raise ConfigError(_join(path, "name"), f"unknown {family} {name!r}{_suggest(name, known)}; "
                          f"known: {', '.join(sorted(known))}")
    rest = {k: v for k, v in raw.items() if k != "name"}
    obj = build(cls, rest, path)
    block_check = registry.BLOCK_CHECKS.get(family)
    problem = registry.import_entry(block_check)(obj) if block_check else None
    if problem is not None:
        raise ConfigError(_join(path, problem[0]), problem[1])
    return obj


def plugin_name(family: str, obj: Any) -> str:
    """The scenario name of plugin instance `obj` (its registry name, else `module:Class`).

    Args:
        family: a key of `fedsim.registry.FAMILIES`.
        obj: a plugin instance.

    Returns:
        The name that rebuilds `obj` from a scenario.
    """
    return registry.name_of(family, obj)


def to_raw(obj: Any, family: str | None = None) -> Any:
    """The inverse of `build`: a plain YAML-ready value (plugins get their `name` back).

    Args:
        obj: a config dataclass, list, mapping or scalar.
        family: the plugin family `obj` belongs to, so its `name` is written; None for a
            plain block.

    Returns:
        Dicts, lists and scalars that `build` turns back into an equal object.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        if family is not None:
            out["name"] = plugin_name(family, obj)
        for f in dataclasses.fields(obj):
            if f.init:
                out[f.name] = to_raw(getattr(obj, f.name), f.metadata.get("family"))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_raw(v, family) for v in obj]  # a list of plugins keeps each item's name
    if isinstance(obj, Mapping):
        return {k: to_raw(v) for k, v in obj.items()}
    return obj
