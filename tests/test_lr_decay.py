"""client.lr_decay: per round in sync mode; per local round of the client in async mode."""

import json

import pytest
from conftest import TINY, merge, run_raw


def _arrivals(out):
    evs = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    return [e for e in evs if e["kind"] == "arrive"]


def test_sync_lr_decay_is_per_round(tmp_path):
    raw = merge(TINY, engine={"rounds": 3}, client={"lr": 0.1, "lr_decay": 0.5})
    raw["strategy"] = {"name": "test_train_metrics:Reporting"}
    run_raw(raw, tmp_path)
    lrs = sorted({(e["version"], e["metrics"]["lr"]) for e in _arrivals(tmp_path)})
    assert lrs == [(0, pytest.approx(0.1)), (1, pytest.approx(0.05)), (2, pytest.approx(0.025))]


def test_async_lr_decay_counts_the_clients_own_jobs_not_server_versions(tmp_path):
    raw = merge(TINY, engine={"mode": "async", "concurrency": 3, "max_versions": 30},
                client={"lr": 0.1, "lr_decay": 0.5},
                system={"compute": {"name": "lognormal", "mean": 1.0, "sigma": 1.0}})
    raw["strategy"] = {"name": "test_train_metrics:Reporting"}
    run_raw(raw, tmp_path)
    evs = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    order: dict[int, list[int]] = {}
    for e in evs:
        if e["kind"] == "dispatch":
            order.setdefault(e["client"], []).append(e["job"])
    checked = 0
    for e in _arrivals(tmp_path):
        j = order[e["client"]].index(e["job"])  # jobs this client started before this one
        assert e["metrics"]["lr"] == pytest.approx(0.1 * 0.5 ** j)
        checked += 1
    assert checked >= 30 and any(e["version"] > order[e["client"]].index(e["job"]) for e in _arrivals(tmp_path))
