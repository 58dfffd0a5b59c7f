"""Optional metrics sinks (`metrics.sinks: [tensorboard, mlflow, csv]`): copies of metrics.jsonl.

Each sink receives exactly the records History writes to metrics.jsonl (after `clean`, so a
NaN is a null there and a gap here), in the same order. They are copies for viewing in other
tools: nothing reads them back, so a failing sink (a full disk, a locked database) warns once,
is switched off, and the run goes on with metrics.jsonl intact.

Step and time given to the trackers: the step is the record's `round` (sync) or `version`
(async); the wall time is the record's `wall_time` (seconds since the engine started) plus the
Unix time at which the engine started, so every point of a run sits on one real-time axis. The
virtual time is logged as the scalar `virtual_time`.

Files (all inside the run folder): `tensorboard/` (event files, float32 scalars),
`mlflow.db` (an MLflow SQLite tracking store: MLflow 3's `file:` store refuses to start
unless `MLFLOW_ALLOW_FILE_STORE=true`), `metrics.csv`. docs/trackers.md says how to open them.
The packages are imported only when a sink is opened.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

SINK_NAMES = ("tensorboard", "mlflow", "csv")
MAX_PARAM_CHARS = 6000  # MLflow 3's limit on one parameter value


@dataclass(frozen=True)
class RunInfo:
    """What a sink may record about the run besides its metrics.

    Args:
        out: the run folder.
        name: the scenario's `name:` (MLflow experiment).
        run_name: the run's label (MLflow run name): the run folder's name.
        params: the flattened resolved scenario, dotted key -> value.
        text: the resolved scenario as YAML (TensorBoard text).
        previous: metrics.jsonl records already in the folder (resuming from a checkpoint).
    """

    out: Path
    name: str
    run_name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    text: str = ""
    previous: Sequence[Mapping[str, Any]] = ()


class Sink(Protocol):
    """One tracker: takes metrics records, then is closed once."""

    def metric(self, record: Mapping[str, Any], step: int, wall_time: float) -> None:
        """Log one metrics.jsonl record at `step` (round or version), `wall_time` Unix seconds."""

    def close(self, summary: Mapping[str, Any] | None, failed: bool) -> None:
        """Finish: `summary` is summary.json's content (None when the run failed)."""


def step_of(record: Mapping[str, Any]) -> int:
    """The tracker step of a record: its `round` in sync runs, else its `version`."""
    return int(record["round"] if record.get("round") is not None else record.get("version") or 0)


def scalars(record: Mapping[str, Any], step_key: str | None = None) -> dict[str, float]:
    """The numeric, finite values of a record as floats (bools, strings, nulls and `step_key` left out)."""
    out = {}
    for k, v in record.items():
        if k == step_key or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


class TensorBoardSink:
    """Event files in `<out>/tensorboard/`, one scalar series per metric, plus the scenario text.

    Written with tensorboard's own event-file writer and protos (no TensorFlow or torch): each
    value is a scalar tensor with the scalars plugin's metadata. It is float32 (DT_FLOAT), what
    TensorBoard's default (Rust) data server reads: it shows no DT_DOUBLE scalars (checked with
    tensorboard 2.21), so the values are metrics.jsonl's rounded to float32; metrics.jsonl and
    metrics.csv keep every digit. On resume a second SessionLog START at the first new step
    makes TensorBoard drop the points that the checkpoint rolled back.
    """

    def __init__(self, info: RunInfo):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event_pb2 = event_pb2
        self._writer = EventFileWriter(str(info.out / "tensorboard"), flush_secs=5)
        self._seen: set[str] = set()
        # Every session starts with a SessionLog START; TensorBoard takes the first as the start
        # and a later one (a resume) as a restart that drops the old points at steps >= its step.
        start = step_of(info.previous[-1]) + 1 if info.previous else 0
        self._writer.add_event(event_pb2.Event(
            step=start, wall_time=time.time(), session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        if not info.previous:
            self._text("scenario", "    " + info.text.replace("\n", "\n    "), 0, time.time())
        self._writer.flush()

    def _summary(self, tag: str, tensor: Any, plugin_meta: Any, step: int, wall_time: float) -> None:
        from tensorboard.compat.proto import summary_pb2

        value = summary_pb2.Summary.Value(tag=tag, tensor=tensor)
        if tag not in self._seen:  # metadata once per series, as TensorBoard expects
            value.metadata.CopyFrom(plugin_meta)
            self._seen.add(tag)
        self._writer.add_event(self._event_pb2.Event(
            step=step, wall_time=wall_time, summary=summary_pb2.Summary(value=[value])))

    def _text(self, tag: str, text: str, step: int, wall_time: float) -> None:
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.plugins.text import metadata

        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[text.encode("utf-8")],
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto())
        self._summary(tag, tensor, metadata.create_summary_metadata(tag, ""), step, wall_time)

    def metric(self, record: Mapping[str, Any], step: int, wall_time: float) -> None:
        """Log every numeric value of `record` as a scalar at `step`; flush (an evaluation point)."""
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.plugins.scalar import metadata

        step_key = "round" if "round" in record else "version"
        for key, value in scalars(record, step_key).items():
            tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[value],
                                            tensor_shape=tensor_shape_pb2.TensorShapeProto())
            self._summary(key, tensor, metadata.create_summary_metadata(key, ""), step, wall_time)
        self._writer.flush()

    def close(self, summary: Mapping[str, Any] | None, failed: bool) -> None:
        """Add summary.json as text (when the run finished) and close the event file."""
        if summary is not None:
            step = step_of(summary.get("final") or {})
            self._text("summary", "    " + json.dumps(summary, indent=2).replace("\n", "\n    "), step, time.time())
        self._writer.close()


class MlflowSink:
    """An MLflow run in the SQLite tracking store `<out>/mlflow.db`.

    Experiment = the scenario's name, run name = the run folder's name; the flattened resolved
    scenario is logged as parameters, each record's numeric values as metrics at the step, and
    at the end `total_wall_time`, the versions and the git commit (tags) and the run's status.
    On resume the same run continues (the store holds only this run folder's run); points
    logged after the checkpoint before the interruption stay in its history (MLflow cannot
    delete metric points).
    """

    def __init__(self, info: RunInfo):
        import logging

        for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
            logging.getLogger(name).setLevel(logging.WARNING)  # table creation notes, not for the user
        with _quiet():
            from mlflow.entities import Param, RunTag
            from mlflow.tracking import MlflowClient

            self.uri = f"sqlite:///{(info.out / 'mlflow.db').resolve()}"
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(info.name)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
                info.name, artifact_location=(info.out / "mlartifacts").resolve().as_uri())
            old = self.client.search_runs([exp_id], max_results=1, order_by=["attributes.start_time DESC"]) \
                if info.previous else []
            if old:
                self.run_id = old[0].info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                run = self.client.create_run(exp_id, run_name=info.run_name,
                                             tags={"fedsim.run_dir": str(info.out), "fedsim.scenario": info.name})
                self.run_id = run.info.run_id
                params = [Param(k, _param_text(v)) for k, v in sorted(info.params.items())]
                for i in range(0, len(params), 100):  # log_batch takes at most 100 parameters
                    self.client.log_batch(self.run_id, params=params[i:i + 100])
                self.client.log_batch(self.run_id, tags=[RunTag("fedsim.scenario_yaml", info.text[:5000])])

    def metric(self, record: Mapping[str, Any], step: int, wall_time: float) -> None:
        """Log every numeric value of `record` at `step`, timestamped `wall_time` (ms)."""
        from mlflow.entities import Metric

        step_key = "round" if "round" in record else "version"
        ms = int(round(wall_time * 1000))
        metrics = [Metric(k, v, ms, step) for k, v in scalars(record, step_key).items()]
        with _quiet():
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, summary: Mapping[str, Any] | None, failed: bool) -> None:
        """Log the summary's wall time, versions and commit, and end the run (FINISHED or FAILED)."""
        from mlflow.entities import Metric, RunTag

        with _quiet():
            if summary is not None:
                tags = [RunTag(f"fedsim.version.{k}", str(v)) for k, v in (summary.get("versions") or {}).items()]
                tags.append(RunTag("fedsim.git_commit", str(summary.get("git_commit"))))
                wall = summary.get("total_wall_time")
                metrics = [Metric("total_wall_time", float(wall), int(time.time() * 1000), 0)] \
                    if isinstance(wall, (int, float)) else []
                self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class CsvSink:
    """`<out>/metrics.csv`: one row per record, the header the union of keys in first-seen order.

    A row with a key not yet in the header (e.g. `train_loss` appearing after the first
    evaluation) rewrites the file with the wider header (atomically, via a temporary file);
    otherwise a row is appended. So the file is complete after every evaluation, not only at
    the end. Empty cell = key absent or null; floats are written with `repr` (exact).
    """

    def __init__(self, info: RunInfo):
        self.path = info.out / "metrics.csv"
        self.rows: list[Mapping[str, Any]] = [dict(r) for r in info.previous]
        self.keys: list[str] = []
        for r in self.rows:
            self.keys.extend(k for k in r if k not in self.keys)
        self._rewrite()

    def _rewrite(self) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.keys)
        w.writerows([_cell(r.get(k)) for k in self.keys] for r in self.rows)
        tmp = self.path.with_suffix(".csv.tmp")
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        os.replace(tmp, self.path)

    def metric(self, record: Mapping[str, Any], step: int, wall_time: float) -> None:
        """Append `record` as a row (rewriting the file when it brings a new key)."""
        self.rows.append(dict(record))
        new = [k for k in record if k not in self.keys]
        if new or not self.keys:
            self.keys.extend(new)
            self._rewrite()
            return
        with self.path.open("a", encoding="utf-8", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerow([_cell(record.get(k)) for k in self.keys])

    def close(self, summary: Mapping[str, Any] | None, failed: bool) -> None:
        """Nothing left to write: every row is on disk already."""


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _param_text(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 3] + "..."


class _quiet(warnings.catch_warnings):
    """Hide third-party deprecation noise (SQLAlchemy's, raised inside MLflow's store)."""

    def __enter__(self):  # noqa: D105
        out = super().__enter__()
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=Warning, module="sqlalchemy")
        warnings.filterwarnings("ignore", message=".*noload.*")
        return out


SINKS = {"tensorboard": TensorBoardSink, "mlflow": MlflowSink, "csv": CsvSink}


class Sinks:
    """The sinks of one run; a sink that raises is reported once and switched off.

    Args:
        sinks: name -> opened sink.
    """

    def __init__(self, sinks: Mapping[str, Sink] | None = None):
        self.sinks: dict[str, Sink] = dict(sinks or {})
        self._offset: float | None = None  # Unix time at which the engine's wall_time was 0
        self.failed: list[str] = []

    def _drop(self, name: str, exc: BaseException) -> None:
        self.sinks.pop(name, None)
        self.failed.append(name)
        msg = " ".join(str(exc).split())[:300]
        warnings.warn(f"metrics.sinks: {name} failed ({type(exc).__name__}: {msg}); it is switched off, "
                      "metrics.jsonl and the other results are unaffected", RuntimeWarning, stacklevel=3)

    def metric(self, record: Mapping[str, Any]) -> None:
        """Give one cleaned metrics.jsonl record to every sink."""
        if not self.sinks:
            return
        wall = record.get("wall_time")
        wall = float(wall) if isinstance(wall, (int, float)) and not isinstance(wall, bool) else 0.0
        if self._offset is None:
            self._offset = time.time() - wall
        step = step_of(record)
        for name, sink in list(self.sinks.items()):
            try:
                sink.metric(record, step, self._offset + wall)
            except Exception as exc:  # noqa: BLE001 — a copy must never stop the run
                self._drop(name, exc)

    def close(self, summary: Mapping[str, Any] | None = None, failed: bool = False) -> None:
        """Close every sink (`summary` = summary.json's content; `failed` when the run stopped on an error)."""
        for name, sink in list(self.sinks.items()):
            try:
                sink.close(summary, failed)
            except Exception as exc:  # noqa: BLE001
                self._drop(name, exc)
        self.sinks.clear()


def open_sinks(names: Sequence[str], info: RunInfo) -> Sinks:
    """Open the named sinks for a run; one that cannot open warns and is left out.

    Args:
        names: sink names (validated: members of SINK_NAMES).
        info: the run's facts.

    Returns:
        The opened sinks (possibly none).
    """
    sinks = Sinks()
    for name in names:
        try:
            sinks.sinks[name] = SINKS[name](info)
        except Exception as exc:  # noqa: BLE001
            sinks._drop(name, exc)
    return sinks
