"""Progress bar and final table for interactive runs (rich)."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from fedsim.runner import RunResult, run

_SHOWN = ("test_accuracy", "test_loss", "optimum_distance", "client_accuracy_mean",
          "client_accuracy_worst10", "jain_index", "virtual_time", "num_updates", "num_failed")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return "n/a" if v is None else str(v)


def run_with_progress(sc, out: Path | None, quiet: bool = False, resume: bool = False) -> RunResult:
    """Run a scenario with a progress bar on stderr (round or model version, latest accuracy).

    Args:
        sc: the scenario.
        out: the run folder (None = the default).
        quiet: no progress bar.
        resume: continue the run in `out` from its checkpoint.

    Returns:
        The run's result.
    """
    console = Console(stderr=True)
    total = sc.engine.rounds if sc.engine.mode == "sync" else (sc.engine.max_versions or None)
    unit = "round" if sc.engine.mode == "sync" else "version"
    with Progress(TextColumn(f"[bold]{sc.name}[/] {unit}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[acc]}"), TimeElapsedColumn(), console=console,
                  disable=quiet, transient=False) as bar:
        task = bar.add_task("run", total=total, acc="")

        def on_progress(step: int, record: dict) -> None:
            acc = record.get("test_accuracy")
            fields = {}
            if acc is not None and isinstance(acc, float) and math.isfinite(acc):
                fields["acc"] = f"acc {acc:.3f}"
            elif record.get("optimum_distance") is not None:
                fields["acc"] = f"dist {record['optimum_distance']:.3g}"
            bar.update(task, completed=step, **fields)

        result = run(sc, out, on_progress=on_progress, resume=resume)
    table = Table(title=f"{sc.name} — final", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in _SHOWN:
        if key in result.final and result.final[key] is not None:
            table.add_row(key, _fmt(result.final[key]))
    table.add_row("wall_time (s)", _fmt(result.summary["total_wall_time"]))
    Console().print(table)
    return result
