"""Read finished (or running) run folders for plots and tables, and group runs by seed.

Only the output files are read (their layout: docs/tutorial.md), never the code that wrote
them; runs that differ only by seed form a group.

Every problem with a folder raises `RunDataError`, whose str() is one line naming the
folder or file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import yaml

from fedsim.errors import RunDataError
from fedsim.results.history import read_jsonl

METRICS_REQUIRED = ("virtual_time", "wall_time", "test_loss")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        rows = read_jsonl(path)
    except FileNotFoundError:
        raise RunDataError(f"{path}: missing (not a complete fedsim run folder?)") from None
    except UnicodeDecodeError as exc:
        raise RunDataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except ValueError as exc:  # read_jsonl names the file and line
        raise RunDataError(str(exc).splitlines()[0] if str(exc) else f"{path}: unreadable") from None
    except OSError as exc:
        raise RunDataError(f"{path}: cannot read ({exc.strerror})") from None
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise RunDataError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
    return rows


def _num(v: Any) -> float:
    """JSON value -> float; null (NaN/Inf on write) and non-numbers -> NaN."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


@dataclass
class Run:
    """One run folder; files are read on first use so a plot needs only its own files."""

    path: Path

    @cached_property
    def scenario(self) -> dict[str, Any]:
        """scenario.resolved.yaml as plain values.

        Raises:
            RunDataError: if it is missing or corrupt.
        """
        p = self.path / "scenario.resolved.yaml"
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDataError(f"{p}: missing (not a fedsim run folder?)") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise RunDataError(f"{p}: corrupt ({type(exc).__name__})") from None
        if not isinstance(raw, dict):
            raise RunDataError(f"{p}: corrupt (top level is not a mapping)")
        return raw

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl rows, each checked for round/version, virtual_time, wall_time, test_loss.

        Raises:
            RunDataError: if the file is missing, empty, corrupt or lacks a required key.
        """
        p = self.path / "metrics.jsonl"
        rows = _jsonl(p)
        if not rows:
            raise RunDataError(f"{p}: no evaluation points yet")
        for i, row in enumerate(rows, start=1):
            missing = [k for k in METRICS_REQUIRED if k not in row]
            if missing or ("round" not in row and "version" not in row):
                missing = missing or ["round/version"]
                raise RunDataError(f"{p}:{i}: missing key(s) {', '.join(missing)}")
        return rows

    @cached_property
    def clients(self) -> list[dict[str, Any]]:
        """clients.jsonl rows (client, round or version, per-client metrics).

        Raises:
            RunDataError: if the file is missing, corrupt or a row lacks its keys.
        """
        p = self.path / "clients.jsonl"
        rows = _jsonl(p)
        for i, row in enumerate(rows, start=1):
            if "client" not in row or ("round" not in row and "version" not in row):
                raise RunDataError(f"{p}:{i}: missing key 'client' or 'round'/'version'")
        return rows

    @cached_property
    def events(self) -> list[dict[str, Any]]:
        """events.jsonl rows (kind, virtual_time, ...).

        Raises:
            RunDataError: if the file is missing, corrupt or a row lacks its keys.
        """
        p = self.path / "events.jsonl"
        rows = _jsonl(p)
        for i, row in enumerate(rows, start=1):
            if "kind" not in row or "virtual_time" not in row:
                raise RunDataError(f"{p}:{i}: missing key 'kind' or 'virtual_time'")
        return rows

    @cached_property
    def summary(self) -> dict[str, Any] | None:
        """summary.json, or None while the run is still going (or was interrupted)."""
        p = self.path / "summary.json"
        if not p.exists():
            return None
        try:
            out = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunDataError(f"{p}: corrupt ({type(exc).__name__})") from None
        if not isinstance(out, dict):
            raise RunDataError(f"{p}: corrupt (not a JSON object)")
        return out

    @cached_property
    def true_probs(self) -> np.ndarray | None:
        """Each client's true participation probability p_n (participation.json), if known."""
        p = self.path / "participation.json"
        if not p.exists():
            return None
        try:
            probs = json.loads(p.read_text(encoding="utf-8")).get("probs")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise RunDataError(f"{p}: corrupt ({type(exc).__name__})") from None
        return None if probs is None else np.array([_num(v) for v in probs])

    # -- derived values -------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The scenario's name (the folder's name if the scenario has none)."""
        return str(self.scenario.get("name", self.path.name))

    @property
    def seed(self) -> Any:
        """The scenario's root seed (None if absent)."""
        return self.scenario.get("seed")

    @property
    def mode(self) -> str:
        """Engine mode, "sync" or "async"."""
        eng = self.scenario.get("engine")
        return str(eng.get("mode", "sync")) if isinstance(eng, dict) else "sync"

    @property
    def step_key(self) -> str:
        """The step column of metrics.jsonl: "round" (sync) or "version" (async)."""
        return "round" if "round" in self.metrics[0] else "version"

    def series(self, key: str) -> np.ndarray:
        """Column `key` of metrics.jsonl as floats (NaN where absent or null)."""
        return np.array([_num(r.get(key)) for r in self.metrics])

    def has(self, key: str) -> bool:
        """Whether metrics.jsonl has at least one finite value in column `key`."""
        return bool(np.isfinite(self.series(key)).any())

    @property
    def regression(self) -> bool:
        """No accuracy anywhere (linear_regression): plot distance/loss instead."""
        return not self.has("test_accuracy")

    def client_matrix(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values[step, client]) of clients.jsonl column `key` (NaN where absent)."""
        rows = self.clients
        sk = "round" if rows and "round" in rows[0] else "version"
        steps = np.array(sorted({int(r[sk]) for r in rows if isinstance(r.get(sk), int)}), dtype=np.int64)
        n = 1 + max((int(r["client"]) for r in rows if isinstance(r.get("client"), int)), default=-1)
        out = np.full((len(steps), n), np.nan)
        index = {int(s): i for i, s in enumerate(steps)}
        for r in rows:
            s, c = r.get(sk), r.get("client")
            if isinstance(s, int) and isinstance(c, int) and c >= 0:
                out[index[s], c] = _num(r.get(key))
        return steps, out

    def client_keys(self) -> set[str]:
        """Every column name that appears in clients.jsonl."""
        return set().union(*(r.keys() for r in self.clients)) if self.clients else set()


def flatten(raw: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested mapping (`{'a': {'b': 1}}` -> `{'a.b': 1}`); lists are values."""
    if isinstance(raw, Mapping):
        out: dict[str, Any] = {}
        for k, v in raw.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: raw}


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Run folders from the command line: a run folder itself, or a folder holding runs.

    A folder holding runs (e.g. a sweep) is searched recursively in sorted order. Duplicates
    are dropped.

    Args:
        paths: folders as given.

    Returns:
        The runs, in the order found.

    Raises:
        RunDataError: if a path is not a folder or holds no run.
    """
    runs: list[Run] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            raise RunDataError(f"{p}: no such run folder")
        found = [p] if (p / "metrics.jsonl").exists() or (p / "scenario.resolved.yaml").exists() else sorted(
            m.parent for m in p.rglob("scenario.resolved.yaml"))
        if not found:
            raise RunDataError(f"{p}: not a run folder (no scenario.resolved.yaml or metrics.jsonl inside)")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(Run(f))
    return runs


@dataclass
class Group:
    """Runs of the same resolved scenario that differ only by seed."""

    label: str
    runs: list[Run]

    @property
    def seeds(self) -> list[Any]:
        """The seed of each run, in group order."""
        return [r.seed for r in self.runs]


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Group by resolved scenario minus seed, in order of first appearance.

    Labels name up to three scenario keys that differ between groups (`strategy.name=fedau`),
    plugin names first, else the scenario name.

    Args:
        runs: the runs.

    Returns:
        The groups.
    """
    keyed: dict[str, list[Run]] = {}
    flat: dict[str, dict[str, Any]] = {}
    for r in runs:
        f = {k: v for k, v in flatten(r.scenario).items() if k != "seed"}
        key = json.dumps(f, sort_keys=True, default=str)
        keyed.setdefault(key, []).append(r)
        flat[key] = f
    keys = list(keyed)
    all_names = sorted(set().union(*(flat[k].keys() for k in keys))) if keys else []
    differ = [n for n in all_names if len({json.dumps(flat[k].get(n), default=str) for k in keys}) > 1]
    # A key that exists only because another plugin was chosen (`strategy.cutoff` when
    # `strategy.name` differs) is implied by that name unless it varies where it exists.
    def implied(d: str) -> bool:
        having = [json.dumps(flat[k][d], default=str) for k in keys if d in flat[k]]
        return len(having) < len(keys) and len(set(having)) == 1

    differ = [d for d in differ if not implied(d)]
    differ.sort(key=lambda n: (not n.endswith(".name"), n))  # plugin choices say the most
    groups = []
    for k in keys:
        shown = [d for d in differ if d != "name" and flat[k].get(d) is not None][:3]
        label = ", ".join(f"{d}={_short(flat[k].get(d))}" for d in shown)
        if "name" in differ or not label:
            label = f"{flat[k].get('name', '?')}" + (f" ({label})" if label else "")
        groups.append(Group(label, keyed[k]))
    return groups


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= 24 else s[:21] + "..."
