"""engine.on_client_error: a bug in a client rule stops a simulated run (one line); drop records it."""

import json
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from conftest import TINY, merge, read_metrics

from fedsim.errors import RunError
from fedsim.scenario.loading import from_mapping


@dataclass(frozen=True, kw_only=True)
class Buggy:
    """Test strategy: FedAvg server whose client rule has a NameError for every client from round 1."""

    modes: ClassVar[tuple[str, ...]] = ("sync",)

    def init(self, params, num_clients):
        return None

    def aggregate(self, state, params, updates, info):
        step = np.mean([u.delta for u in updates], axis=0) if updates else 0.0
        return state, (params + step).astype(np.float32)

    def client_update(self, task, trainer, state):
        new, loss = trainer.sgd(task.params)
        if task.round >= 1:
            return undefined_name  # noqa: F821 — the bug under test
        return trainer.make_update(new, loss), state


def _raw(**engine):
    raw = merge(TINY, engine={"rounds": 3, **engine})
    raw["strategy"] = {"name": "test_client_errors:Buggy"}
    return raw


def test_client_error_stops_simulated_run_with_one_line_and_keeps_metrics(tmp_path):
    from fedsim.runner import run

    with pytest.raises(RunError) as info:
        run(from_mapping(_raw()), tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert "client " in msg and "job " in msg and "NameError" in msg and "undefined_name" in msg
    assert "test_client_errors.py:" in msg  # where
    rows = read_metrics(tmp_path)
    assert [r["round"] for r in rows] == [0, 1]  # what was written before the error is kept


def test_client_error_drop_records_drops_and_warns_when_a_round_fails_entirely(tmp_path):
    from fedsim.runner import run

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(from_mapping(_raw(on_client_error="drop")), tmp_path)
    assert sum("every one of its" in str(w.message) for w in caught) == 2  # rounds 2 and 3
    evs = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "warning" for e in evs)
    assert all("NameError" in e["reason"] for e in evs if e["kind"] == "drop")
    assert read_metrics(tmp_path)[-1]["num_failed"] > 0


def test_deploy_server_forces_drop():
    from fedsim.flower.serve import with_drop_on_client_error

    sc = from_mapping(_raw())
    assert sc.engine.on_client_error is None
    assert with_drop_on_client_error(sc).engine.on_client_error == "drop"
    said = []
    forced = with_drop_on_client_error(from_mapping(_raw(on_client_error="raise")), said.append)
    assert forced.engine.on_client_error == "drop" and said


def test_final_table_shows_num_failed(tmp_path, capsys):
    from fedsim.cli.progress import run_with_progress

    run_with_progress(from_mapping(_raw(on_client_error="drop")), tmp_path, quiet=True)
    assert "num_failed" in capsys.readouterr().out
