"""`fedsim compare`: one row per scenario, seeds pooled as mean ± std.

Columns: final accuracy, worst-10% client accuracy, Jain's index, rounds and virtual time to
a target, bytes and wall time — as a rich table, Markdown and CSV. Reads run folders only
(fedsim.results.rundata).

Regression runs (no accuracy) report the distance to the optimum (or the test loss)
instead, and the target is reached when that falls to or below it.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fedsim.results.rundata import Group, Run, find_runs, group_runs


@dataclass(frozen=True)
class Column:
    """One table column: its CSV name, heading and decimals."""

    key: str  # CSV name
    title: str  # table heading
    digits: int  # decimals shown


@dataclass(frozen=True)
class Cell:
    """One group's value in one column, one entry per seed."""

    values: tuple[float, ...]  # one per seed, NaN = not available / target not reached

    @property
    def reached(self) -> int:
        """How many seeds have a finite value (e.g. reached the target)."""
        return int(np.isfinite(self.values).sum())

    @property
    def mean(self) -> float:
        """Mean over the finite values (NaN if none)."""
        v = np.array(self.values)
        return float(v[np.isfinite(v)].mean()) if self.reached else math.nan

    @property
    def std(self) -> float:
        """Population std over the finite values (NaN if none)."""
        v = np.array(self.values)
        return float(v[np.isfinite(v)].std()) if self.reached else math.nan

    def text(self, digits: int) -> str:
        """Format as `mean ± std (reached/seeds)`; "—" when no seed has a value.

        Args:
            digits: decimals shown.

        Returns:
            The cell text (± only with more than one value, the count only when some are missing).
        """
        if not self.reached:
            return "—"
        s = f"{self.mean:.{digits}f}"
        if self.reached > 1:
            s += f" ± {self.std:.{digits}f}"
        if self.reached < len(self.values):
            s += f" ({self.reached}/{len(self.values)})"
        return s


@dataclass(frozen=True)
class Comparison:
    """A comparison table: primary metric, target, columns and one row per group."""

    metric: str  # test_accuracy | optimum_distance | test_loss
    target: float
    target_note: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[str, int, tuple[Cell, ...]], ...]  # (label, seeds, cells)


def _primary(runs: Sequence[Run]) -> str:
    if any(not r.regression for r in runs):
        return "test_accuracy"
    return "optimum_distance" if any(r.has("optimum_distance") for r in runs) else "test_loss"


def _last(run: Run, key: str) -> float:
    v = run.series(key)
    ok = v[np.isfinite(v)]
    return float(ok[-1]) if len(ok) else math.nan


def _first_reach(run: Run, metric: str, target: float, xkey: str) -> float:
    y, x = run.series(metric), run.series(xkey)
    hit = (y >= target) if metric == "test_accuracy" else (y <= target)
    idx = np.flatnonzero(hit & np.isfinite(y))
    return float(x[idx[0]]) if len(idx) else math.nan


def _wall(run: Run) -> float:
    s = run.summary
    if s and isinstance(s.get("total_wall_time"), (int, float)):
        return float(s["total_wall_time"])
    return _last(run, "wall_time")


def _default_target(groups: Sequence[Group], metric: str) -> tuple[float, str]:
    finals = [float(np.nanmean([_last(r, metric) for r in g.runs])) for g in groups]
    finals = [f for f in finals if math.isfinite(f)]
    if not finals:
        return math.nan, "no finite final value"
    if metric == "test_accuracy":
        return math.floor(0.95 * min(finals) * 100) / 100, "95% of the lowest final accuracy, rounded down"
    hi = 2 * max(finals)
    return float(f"{hi:.2g}"), f"twice the highest final {metric}"


def compare(run_dirs: Sequence[str | Path], target: float | None = None, per_run: bool = False) -> Comparison:
    """Build the comparison of the runs under `run_dirs`.

    Args:
        run_dirs: run folders or folders holding runs (e.g. a sweep).
        target: value of the primary metric that counts as reached (accuracy: ≥, distance or
            loss: ≤); default 95% of the lowest final accuracy, or twice the highest final value.
        per_run: one row per run instead of per group of seeds.

    Returns:
        The table.

    Raises:
        RunDataError: if a folder is not a readable run.
    """
    runs = find_runs(run_dirs)
    groups = group_runs(runs)
    if per_run:
        groups = [Group(f"{g.label} seed={r.seed}", [r]) for g in groups for r in g.runs]
    metric = _primary(runs)
    note = "given"
    if target is None:
        target, note = _default_target(groups, metric)
    acc = metric == "test_accuracy"
    step = "round" if all(r.step_key == "round" for r in runs) else "version"
    short = {"test_accuracy": "accuracy", "optimum_distance": "distance", "test_loss": "loss"}[metric]
    cols = [Column(f"final_{short}", f"final {short}", 4)]
    getters = [lambda r: _last(r, metric)]
    if acc:
        cols += [Column("worst10_accuracy", "worst-10% acc.", 4), Column("jain", "Jain", 4)]
        getters += [lambda r: _last(r, "client_accuracy_worst10"), lambda r: _last(r, "jain_index")]
    else:
        if metric != "test_loss":
            cols.append(Column("final_loss", "final loss", 4))
            getters.append(lambda r: _last(r, "test_loss"))
        cols.append(Column("worst10_client_loss", "worst-10% client loss", 4))
        getters.append(lambda r: _last(r, "client_loss_worst10"))
    cols += [Column(f"{step}s_to_target", f"{step}s to target", 1),
             Column("virtual_time_to_target", "virtual s to target", 1),
             Column("mbytes", "MB up+down", 3), Column("wall_time", "wall s", 2)]
    getters += [lambda r: _first_reach(r, metric, target, r.step_key),
                lambda r: _first_reach(r, metric, target, "virtual_time"),
                lambda r: (_last(r, "bytes_up") + _last(r, "bytes_down")) / 1e6, _wall]
    rows = tuple((g.label, len(g.runs), tuple(Cell(tuple(get(r) for r in g.runs)) for get in getters))
                 for g in groups)
    return Comparison(metric, target, note, tuple(cols), rows)


def title(c: Comparison) -> str:
    """The table's title line: the target and where it came from."""
    op = "≥" if c.metric == "test_accuracy" else "≤"
    return f"target: {c.metric} {op} {c.target:g} ({c.target_note})"


def to_markdown(c: Comparison) -> str:
    """Render as a Markdown table, preceded by the title."""
    head = ["run", "seeds"] + [col.title for col in c.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for label, n, cells in c.rows:
        texts = [cell.text(col.digits) for cell, col in zip(cells, c.columns, strict=True)]
        lines.append("| " + " | ".join([label.replace("|", "\\|"), str(n)] + texts) + " |")
    return f"{title(c).capitalize()}.\n\n" + "\n".join(lines) + "\n"


def to_csv(c: Comparison) -> str:
    """Render as CSV: mean, std and count per column, then the target metric and value."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "seeds"] + [f"{col.key}_{s}" for col in c.columns for s in ("mean", "std", "n")]
               + ["target_metric", "target"])
    for label, n, cells in c.rows:
        vals: list[object] = [label, n]
        for cell in cells:
            vals += [_csv_num(cell.mean), _csv_num(cell.std), cell.reached]
        w.writerow(vals + [c.metric, c.target])
    return buf.getvalue()


def _csv_num(v: float) -> str:
    return "" if not math.isfinite(v) else repr(round(v, 10))


def write(c: Comparison, out: Path) -> tuple[Path, Path]:
    """Write `<out>.md` and `<out>.csv` (any extension on `out` is replaced).

    Args:
        c: the table.
        out: base path; its folder is created.

    Returns:
        (Markdown path, CSV path).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    md, cs = out.with_suffix(".md"), out.with_suffix(".csv")
    md.write_text(to_markdown(c), encoding="utf-8")
    cs.write_text(to_csv(c), encoding="utf-8")
    return md, cs


def print_table(c: Comparison) -> None:
    """Print as a rich table on stdout (200 columns wide when not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title(c))
    t.add_column("run")
    t.add_column("seeds", justify="right")
    for col in c.columns:
        t.add_column(col.title, justify="right")
    for label, n, cells in c.rows:
        t.add_row(label, str(n), *[cell.text(col.digits) for cell, col in zip(cells, c.columns, strict=True)])
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped or logged: do not squeeze into 80 columns
    console.print(t)
