"""Client training metrics are logged on `arrive` events and as example-weighted means in metrics.jsonl."""

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from conftest import TINY, merge, read_metrics, run_raw


@dataclass(frozen=True, kw_only=True)
class Reporting:
    """Test strategy: FedAvg server; client k reports n_k = k + 1, train_loss = k, extra = 2k, lr."""

    modes: ClassVar[tuple[str, ...]] = ("sync", "async")

    def init(self, params, num_clients):
        return None

    def aggregate(self, state, params, updates, info):
        step = np.mean([u.delta for u in updates], axis=0) if updates else 0.0
        return state, (params + step).astype(np.float32)

    def receive(self, state, params, update, info):
        return state, (params + 0.5 * update.delta).astype(np.float32)

    def client_update(self, task, trainer, state):
        new, _ = trainer.sgd(task.params)
        k = task.client
        up = trainer.make_update(new, float(k), extra=2.0 * k, lr=trainer.lr)
        return dataclasses.replace(up, num_examples=k + 1), state


def _events(out, kind):
    return [e for e in map(json.loads, (out / "events.jsonl").read_text().splitlines()) if e["kind"] == kind]


def test_train_metrics_on_arrive_events_and_weighted_in_metrics(tmp_path):
    raw = merge(TINY, engine={"rounds": 2}, metrics={"eval_every": 1})
    raw["strategy"] = {"name": "test_train_metrics:Reporting"}
    run_raw(raw, tmp_path)
    arrivals = _events(tmp_path, "arrive")
    assert len(arrivals) == 12
    assert all(e["metrics"]["train_loss"] == e["client"] for e in arrivals)
    rows = read_metrics(tmp_path)
    assert "train_loss" not in rows[0] or rows[0]["train_loss"] is None  # no update before round 1
    for row in rows[1:]:
        # Σ (k+1)·k / Σ (k+1) over k = 0..5 = 70 / 21
        assert row["train_loss"] == pytest.approx(70 / 21)
        assert row["train_extra"] == pytest.approx(140 / 21)
        assert set(row) >= {"round", "version", "test_accuracy", "num_updates", "num_failed"}


def test_train_metrics_average_over_every_update_since_the_previous_evaluation(tmp_path):
    raw = merge(TINY, engine={"rounds": 4}, metrics={"eval_every": 2},
                participation={"name": "bernoulli", "probs": {"name": "constant", "p": 0.5}})
    raw["strategy"] = {"name": "test_train_metrics:Reporting"}
    run_raw(raw, tmp_path)
    rows = read_metrics(tmp_path)
    assert [r["round"] for r in rows] == [0, 2, 4]
    arrivals = _events(tmp_path, "arrive")
    for row, versions in ((rows[1], (0, 1)), (rows[2], (2, 3))):
        ks = [e["client"] for e in arrivals if e["version"] in versions]
        assert len(set(ks)) > 1
        assert row["train_loss"] == pytest.approx(sum((k + 1) * k for k in ks) / sum(k + 1 for k in ks))
