"""`fedsim sweep`: run a grid of scenario overrides × seeds into one folder.

Each combination gets a subfolder with a deterministic name (`strategy.name=fedau__seed=3`),
ready for `fedsim plot` and `fedsim compare`.

Every combination is loaded and validated before anything runs. A combination whose
folder already holds a finished run of the identical resolved scenario is skipped, so
an interrupted sweep resumes where it stopped. Runs on the `inline` executor go to a
pool of `jobs` processes; runs on other executors (which parallelise clients
themselves) go one after another.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from fedsim.errors import RunError, ScenarioError, SweepError
from fedsim.scenario.fields import plugin_name
from fedsim.scenario.loading import load, to_yaml

MAX_NAME = 120


@dataclass(frozen=True)
class Point:
    """One combination: its folder name and the overrides that make it."""

    name: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class SweepResult:
    """What `sweep` did: the folder, every point, and which ran, were skipped or failed (with why)."""

    out: Path
    points: tuple[Point, ...]
    ran: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]  # (name, one-line reason)


def parse_seeds(text: str) -> list[int]:
    """Parse `--seeds`: `0..4` (inclusive), `0,3,7` or `5`.

    Args:
        text: the flag's value.

    Returns:
        The seeds, in the order given.

    Raises:
        SweepError: if the text is malformed or the seeds are negative or repeated.
    """
    try:
        if ".." in text:
            lo, hi = (int(x) for x in text.split("..", 1))
            if hi < lo:
                raise ValueError
            return list(range(lo, hi + 1))
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        raise SweepError(f"--seeds {text!r}: expected a range like 0..4 or a list like 0,1,5") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds {text!r}: seeds must be distinct and >= 0")
    return seeds


def split_values(text: str) -> list[str]:
    """Split `a,b,[1,2]` on commas outside brackets/braces/quotes.

    Args:
        text: the value list of one `--set`.

    Returns:
        The values, stripped (a YAML list or mapping stays one value).
    """
    out, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    out.append(cur)
    return [v.strip() for v in out]


def parse_set(item: str) -> tuple[str, list[str]]:
    """Parse one `--set key.path=v1,v2` flag into (key, values).

    Args:
        item: the flag's value.

    Returns:
        (dotted key, distinct non-empty values).

    Raises:
        SweepError: if the syntax is wrong, the key is `seed` (use --seeds) or values repeat.
    """
    key, sep, values = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")) or key == "seed":
        hint = " (use --seeds for seeds)" if key == "seed" else ""
        raise SweepError(f"--set {item!r}: expected key.path=value1,value2{hint}")
    vals = split_values(values)
    if any(v == "" for v in vals) or len(set(vals)) != len(vals):
        raise SweepError(f"--set {item!r}: values must be non-empty and distinct")
    return key, vals


def folder_name(pairs: Sequence[tuple[str, str]]) -> str:
    """A filesystem-safe folder name for one combination: `k1=v1__k2=v2`.

    Characters outside [A-Za-z0-9._=+-] become `-`; a name over MAX_NAME characters is cut and
    suffixed with 8 hex digits of its SHA-1, so it stays unique and deterministic.

    Args:
        pairs: (key, value) of each axis, in grid order.

    Returns:
        The name (`run` when there are no axes).
    """
    name = "__".join(f"{k}={v}" for k, v in pairs) or "run"
    name = re.sub(r"[^A-Za-z0-9._=+-]", "-", name)
    if len(name) > MAX_NAME:
        import hashlib

        name = name[:MAX_NAME - 9] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def grid(sets: Sequence[tuple[str, list[str]]], seeds: Sequence[int] | None) -> list[Point]:
    """Cartesian product in the order given (`--set` flags, then seeds last).

    Args:
        sets: (key, values) per `--set` flag.
        seeds: the `--seeds`, or None for the scenario's own seed.

    Returns:
        One point per combination.

    Raises:
        SweepError: if a key repeats or two combinations get the same folder name.
    """
    keys = [k for k, _ in sets]
    if len(set(keys)) != len(keys):
        raise SweepError("the same key is given to --set twice")
    axes = [vals for _, vals in sets] + ([[str(s) for s in seeds]] if seeds is not None else [])
    names = keys + (["seed"] if seeds is not None else [])
    points = []
    for combo in itertools.product(*axes):
        pairs = list(zip(names, combo, strict=True))
        points.append(Point(folder_name(pairs), tuple(f"{k}={v}" for k, v in pairs)))
    if len({p.name for p in points}) != len(points):
        raise SweepError("two combinations map to the same folder name; use values that differ in letters/digits")
    return points


def _run_point(scenario: str, overrides: tuple[str, ...], out: str) -> str | None:
    """Worker: run one combination; returns None or a one-line error."""
    import contextlib
    import io

    from fedsim.runner import run

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # override notes were shown at validation
            sc = load(scenario, overrides)
        run(sc, Path(out))
    except (ScenarioError, RunError, ValueError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _finished(folder: Path, resolved: str) -> bool:
    res = folder / "scenario.resolved.yaml"
    return (folder / "summary.json").exists() and res.exists() and res.read_text(encoding="utf-8") == resolved


def default_out(scenario: str | Path, fixed: Sequence[str] = ()) -> Path:
    """The sweep folder when none is given: runs/<scenario name>/sweep-<local time>.

    Args:
        scenario: the scenario file (its `name:`, or its file stem when it does not load).
        fixed: overrides applied to every run (they may change the name).

    Returns:
        The folder path (not created).
    """
    try:
        name = load(scenario, fixed).name
    except ScenarioError:
        name = Path(scenario).stem
    return Path("runs") / name / time.strftime("sweep-%Y%m%d-%H%M%S")


def sweep(scenario: str | Path, sets: Sequence[str] = (), seeds: Sequence[int] | None = None,
          fixed: Sequence[str] = (), out: str | Path | None = None, jobs: int = 1, force: bool = False,
          on_event: Callable[[str, str], None] | None = None) -> SweepResult:
    """Run the grid, skipping points whose folder already holds the same finished run.

    Args:
        scenario: the scenario file.
        sets: `key=v1,v2` strings, one sweep axis each.
        seeds: seeds axis (last), or None.
        fixed: `key=value` overrides applied to every run.
        out: the sweep folder; default `default_out(scenario, fixed)`.
        jobs: worker processes for inline-executor runs (other executors run one at a time).
        force: rerun finished points too.
        on_event: `on_event(name, status)` reports 'skip'/'start'/'done'/'fail: ...'.

    Returns:
        What ran, what was skipped and what failed.

    Raises:
        SweepError: for bad flags; ScenarioError if a combination does not validate (before
            anything runs).
    """
    if jobs < 1:
        raise SweepError(f"--jobs {jobs}: must be >= 1")
    points = grid([parse_set(s) for s in sets], seeds)
    scenario = str(scenario)
    out = Path(out) if out is not None else default_out(scenario, fixed)
    todo, skipped, sequential = [], [], False
    for p in points:  # validate everything first: a typo fails before hours of compute
        sc = load(scenario, [*fixed, *p.overrides])
        sequential |= plugin_name("executor", sc.executor) != "inline"
        if not force and _finished(out / p.name, to_yaml(sc)):
            skipped.append(p.name)
        else:
            todo.append(p)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({
        "scenario": scenario, "fixed": list(fixed), "sets": [parse_set(s) for s in sets],
        "seeds": None if seeds is None else list(seeds), "runs": {p.name: list(p.overrides) for p in points},
    }, indent=2) + "\n", encoding="utf-8")
    note = on_event or (lambda name, status: None)
    for name in skipped:
        note(name, "skip")
    failed: list[tuple[str, str]] = []
    if jobs == 1 or sequential or len(todo) <= 1:
        for p in todo:
            note(p.name, "start")
            err = _run_point(scenario, (*fixed, *p.overrides), str(out / p.name))
            note(p.name, "done" if err is None else f"fail: {err}")
            if err is not None:
                failed.append((p.name, err))
    else:
        import multiprocessing

        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_point, scenario, (*fixed, *p.overrides), str(out / p.name)): p
                       for p in todo}
            for p in todo:
                note(p.name, "start")
            for fut in as_completed(futures):
                p = futures[fut]
                try:
                    err = fut.result()
                except Exception as exc:  # a crashed worker process
                    err = f"{type(exc).__name__}: {exc}"
                note(p.name, "done" if err is None else f"fail: {err}")
                if err is not None:
                    failed.append((p.name, err))
    failed.sort()
    return SweepResult(out, tuple(points), tuple(p.name for p in todo if p.name not in dict(failed)),
                       tuple(skipped), tuple(failed))
