"""The run record on disk: append-only JSONL files (metrics, clients, events).

Writing an evaluation's metrics row flushes all three files, so a crash or a SIGKILL loses
at most the lines written since the last evaluation (the per-client rows of the evaluation
in progress included; the engine flushes those once written). Between evaluations, per-client
rows and events are buffered: writing each of millions of event lines through to the OS
would dominate a fast run.

The files are described in docs/tutorial.md.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping


def clean(value: Any) -> Any:
    """Make a value JSON-safe: NaN/Inf become null, numpy scalars plain numbers, tuples lists.

    Args:
        value: a scalar, numpy scalar, or nested dict/list/tuple of them.

    Returns:
        The cleaned value (containers are copied).
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return clean(value.item())
    return value


class History:
    """Writer of a run's metrics.jsonl, clients.jsonl and events.jsonl, one JSON object per line.

    Args:
        out: the run folder (created if missing).
        append: keep existing lines (resuming from a checkpoint that truncated them); else start empty.
        sinks: optional trackers (fedsim.results.sinks.Sinks) given a copy of every metrics record.
    """

    FILES = ("metrics", "clients", "events")

    def __init__(self, out: Path, append: bool = False, sinks: Any = None):
        self.out = out
        self.sinks = sinks
        out.mkdir(parents=True, exist_ok=True)
        mode = "a" if append else "w"
        self._fh = {name: (out / f"{name}.jsonl").open(mode, encoding="utf-8") for name in self.FILES}
        self.last_metrics: dict[str, Any] = {}

    def _write(self, name: str, record: Mapping[str, Any], flush: bool = True) -> None:
        fh = self._fh[name]
        fh.write(json.dumps(clean(dict(record)), separators=(",", ":")) + "\n")
        if flush:
            fh.flush()

    def metric(self, record: Mapping[str, Any]) -> None:
        """Append one evaluation point to metrics.jsonl and flush all three files; kept as `last_metrics`."""
        self.last_metrics = dict(record)
        self._write("metrics", record, flush=False)
        self.flush()  # an evaluation point: everything up to it reaches the disk
        if self.sinks is not None:  # the trackers get what metrics.jsonl got, after it is written
            self.sinks.metric(clean(dict(record)))

    def client(self, record: Mapping[str, Any]) -> None:
        """Append one per-client row to clients.jsonl (buffered until the next flush)."""
        self._write("clients", record, flush=False)

    def event(self, record: Mapping[str, Any]) -> None:
        """Append one engine event (dispatch, arrival, drop, commit, ...) to events.jsonl (buffered)."""
        self._write("events", record, flush=False)

    def flush(self) -> None:
        """Flush all three files to the OS."""
        for fh in self._fh.values():
            fh.flush()

    def offsets(self) -> dict[str, int]:
        """Byte length of each file after flushing (what a checkpoint truncates back to)."""
        self.flush()
        return {name: os.fstat(fh.fileno()).st_size for name, fh in self._fh.items()}

    def close(self) -> None:
        """Close all three files (flushing them)."""
        for fh in self._fh.values():
            fh.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file, with a clear error naming the file and line on corruption.

    Args:
        path: the file; blank lines are skipped.

    Returns:
        One dict per line.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: `path:line: not valid JSON (...)`.
    """
    rows = []
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
    return rows
