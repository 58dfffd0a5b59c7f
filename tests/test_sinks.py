"""metrics.sinks: TensorBoard, MLflow and CSV copies read back equal to metrics.jsonl; results
unchanged by sinks; one-line errors for unknown sinks and missing packages; a failing sink
warns once and the run goes on; a resumed run's copies match its metrics.jsonl."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY, merge, read_metrics, run_raw

from fedsim.cli.app import main
from fedsim.results import sinks as sinks_mod
from fedsim.results.rundata import flatten as rundata_flatten

ALL = ["tensorboard", "mlflow", "csv"]
RAW = merge(TINY, engine={"rounds": 4})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sinks")
    run_raw(merge(RAW, metrics={"sinks": ALL}), base / "with")
    run_raw(RAW, base / "without")
    return base / "with", base / "without"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _numeric(rows: list[dict], skip: str = "round") -> dict[str, list[tuple[int, float]]]:
    """key -> [(round, value)] for every numeric value, as a tracker should have it."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        for k, v in r.items():
            if k != skip and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(k, []).append((r["round"], float(v)))
    return out


def test_scalars_and_step_of():
    rec = {"round": 3, "version": 3, "accuracy": 0.5, "name": "x", "flag": True, "missing": None}
    assert sinks_mod.step_of(rec) == 3
    assert sinks_mod.step_of({"version": 7, "accuracy": 1.0}) == 7  # async: keyed by version
    assert sinks_mod.scalars(rec, "round") == {"version": 3.0, "accuracy": 0.5}
    assert rundata_flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": 1, "a.c": [1, 2], "d": "x"}
    # every sink the schema accepts has a writer and a package entry
    import typing

    from fedsim.scenario.schema import SINK_PACKAGES, MetricsConfig

    accepted = typing.get_args(typing.get_args(typing.get_type_hints(MetricsConfig)["sinks"])[0])
    assert set(accepted) == set(sinks_mod.SINKS) == set(SINK_PACKAGES) == set(sinks_mod.SINK_NAMES)


def test_results_identical_with_and_without_sinks(runs):
    with_, without = runs
    assert read_metrics(with_) == read_metrics(without)  # all but wall_time
    for name in ("clients.jsonl", "events.jsonl"):
        assert (with_ / name).read_bytes() == (without / name).read_bytes()
    import torch

    a, b = torch.load(with_ / "model.pt"), torch.load(without / "model.pt")
    assert torch.equal(a["params"], b["params"])
    assert sorted(p.name for p in with_.iterdir()) == sorted(
        [p.name for p in without.iterdir()] + ["tensorboard", "mlflow.db", "metrics.csv"])


def test_tensorboard_reads_back_metrics_jsonl(runs):
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    out = runs[0]
    rows = _jsonl(out / "metrics.jsonl")
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    expected = _numeric(rows)
    tags = set(acc.Tags()["tensors"])
    assert tags == set(expected) | {"scenario", "summary"}
    for key, points in expected.items():
        got = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(key)]
        assert all(v.dtype == np.float32 for _, v in got)  # what TensorBoard's data server shows
        assert [(s, float(v)) for s, v in got] == [(s, float(np.float32(v))) for s, v in points], key
    # wall time: the engine's start + each record's wall_time, so differences match the records'
    walls = [e.wall_time for e in acc.Tensors("test_accuracy")]
    for i in range(1, len(rows)):
        assert walls[i] - walls[0] == pytest.approx(rows[i]["wall_time"] - rows[0]["wall_time"], abs=1e-3)
    text = tensor_util.make_ndarray(acc.Tensors("scenario")[0].tensor_proto).item().decode()
    assert "name: tiny" in text and "lr: 0.1" in text
    summary = json.loads((out / "summary.json").read_text())
    got = tensor_util.make_ndarray(acc.Tensors("summary")[0].tensor_proto).item().decode()
    assert json.loads(got)["final"] == summary["final"]


def test_mlflow_reads_back_metrics_jsonl(runs):
    from mlflow.tracking import MlflowClient

    out = runs[0]
    rows = _jsonl(out / "metrics.jsonl")
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == out.name and run.info.status == "FINISHED"
    params = run.data.params
    assert params["client.lr"] == "0.1" and params["engine.rounds"] == "4"
    assert params["strategy.name"] == "fedavg" and params["metrics.sinks"] == json.dumps(ALL)
    for key, points in _numeric(rows).items():
        hist = client.get_metric_history(run.info.run_id, key)
        assert sorted((m.step, m.value) for m in hist) == points, key
    summary = json.loads((out / "summary.json").read_text())
    assert run.data.metrics["total_wall_time"] == summary["total_wall_time"]
    assert run.data.tags["fedsim.git_commit"] == str(summary["git_commit"])
    stamps = [m.timestamp for m in sorted(client.get_metric_history(run.info.run_id, "test_accuracy"),
                                          key=lambda m: m.step)]
    assert stamps == sorted(stamps)


def test_csv_reads_back_metrics_jsonl(runs):
    out = runs[0]
    rows = _jsonl(out / "metrics.jsonl")
    with (out / "metrics.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        header, cells = reader.fieldnames, list(reader)
    # the union in first-seen order: round 0 has no training yet, train_loss comes with round 1
    assert "train_loss" not in rows[0] and "train_loss" in rows[1]
    assert header == list(rows[0]) + ["train_loss"]
    assert len(cells) == len(rows)
    for row, cell in zip(rows, cells, strict=True):
        for k in header:
            if k not in row or row[k] is None:
                assert cell[k] == ""
            else:
                assert float(cell[k]) == row[k] and type(json.loads(cell[k])) is type(row[k])


def _validate(tmp_path: Path, capsys, sinks) -> tuple[int, str]:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(merge(RAW, metrics={"sinks": sinks})))
    rc = main(["validate", str(p)])
    return rc, capsys.readouterr().err.strip()


def test_unknown_duplicate_and_missing_package_errors(tmp_path, capsys, monkeypatch):
    p = tmp_path / "s.yaml"
    rc, err = _validate(tmp_path, capsys, ["csv", "tensorbord"])
    assert rc == 2 and err == (f"error: {p}: metrics.sinks[1]: must be one of ['tensorboard', 'mlflow', 'csv'], "
                               "got 'tensorbord' (did you mean 'tensorboard'?)")
    rc, err = _validate(tmp_path, capsys, ["csv", "csv"])
    assert rc == 2 and err == f"error: {p}: metrics.sinks: a sink is named twice: ['csv', 'csv']"
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the package were not installed
    rc, err = _validate(tmp_path, capsys, ["tensorboard"])
    assert rc == 2 and err == (f"error: {p}: metrics.sinks: tensorboard needs the tensorboard package "
                               "(pip install 'fedsim[tensorboard]')")
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    rc, err = _validate(tmp_path, capsys, ["mlflow"])
    assert rc == 2 and err.endswith("metrics.sinks: mlflow needs the sqlalchemy package (pip install 'fedsim[mlflow]')")
    rc, err = _validate(tmp_path, capsys, ["csv"])  # csv needs nothing
    assert rc == 0


def test_failing_sink_warns_once_and_the_run_goes_on(tmp_path, monkeypatch):
    calls = []

    def full_disk(self, record, step, wall_time):
        calls.append(step)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sinks_mod.CsvSink, "metric", full_disk)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_raw(merge(RAW, metrics={"sinks": ["csv", "tensorboard"]}), tmp_path / "r")
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and msgs[0].startswith("metrics.sinks: csv failed (OSError: [Errno 28] No space left")
    assert calls == [0]  # switched off after the first failure
    assert [r["round"] for r in _jsonl(tmp_path / "r" / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert (tmp_path / "r" / "summary.json").exists()
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Tensors("test_accuracy")] == [0, 1, 2, 3, 4]  # the other sink went on


def test_resumed_run_copies_match_metrics_jsonl(tmp_path):
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    from fedsim.engine import checkpoint

    raw = merge(TINY, engine={"rounds": 10}, checkpoint={"every": 4}, metrics={"sinks": ["tensorboard", "csv"]})
    run_raw(raw, tmp_path / "ref")
    # the folder as a crash right after the round-8 checkpoint leaves it (files longer than the checkpoint)
    shutil.copytree(tmp_path / "ref", tmp_path / "again")
    (tmp_path / "again" / "summary.json").unlink()
    assert checkpoint.load(tmp_path / "again")["next_round"] == 8
    assert main(["run", "--resume", str(tmp_path / "again"), "--quiet"]) == 0
    out = tmp_path / "again"
    rows = _jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(11))
    with (out / "metrics.csv").open(newline="") as fh:
        cells = list(csv.DictReader(fh))
    assert [float(c["test_loss"]) for c in cells] == [r["test_loss"] for r in rows]
    assert [float(c["wall_time"]) for c in cells] == [r["wall_time"] for r in rows]
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()  # two event files; the second one's START at step 8 drops the old 8..10
    got = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors("test_loss")]
    assert got == [(r["round"], float(np.float32(r["test_loss"]))) for r in rows]


def test_async_run_is_keyed_by_version(tmp_path):
    from mlflow.tracking import MlflowClient

    raw = merge(TINY, engine={"mode": "async", "concurrency": 3, "max_versions": 6},
                strategy={"name": "fedbuff", "buffer_size": 2}, metrics={"eval_every": 2, "sinks": ["mlflow", "csv"]})
    out = tmp_path / "a"
    run_raw(raw, out)
    rows = _jsonl(out / "metrics.jsonl")
    assert "round" not in rows[0] and [r["version"] for r in rows] == [0, 2, 4, 6]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    hist = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "test_loss"))
    assert hist == [(r["version"], r["test_loss"]) for r in rows]
    assert client.get_metric_history(run.info.run_id, "version") == []  # the step, not a series
    with (out / "metrics.csv").open(newline="") as fh:
        assert [int(c["version"]) for c in csv.DictReader(fh)] == [0, 2, 4, 6]
