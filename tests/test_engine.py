"""Sync engine behaviour: determinism, drops, deadlines, failing and malicious clients."""

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from conftest import TINY, merge, read_metrics, run_raw

from fedsim.engine.validation import validate_update
from fedsim.scenario.loading import from_mapping
from fedsim.types import ClientUpdate
from strategies.scaffold import Scaffold, ScaffoldUp


def events(out):
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def test_same_seed_same_history_different_seed_differs(tmp_path):
    raw = merge(TINY, participation={"name": "bernoulli", "probs": {"name": "uniform", "low": 0.3, "high": 0.9}},
                system={"compute": {"name": "lognormal", "mean": 1.0, "sigma": 0.5}, "jitter": 0.2})
    run_raw(raw, tmp_path / "a")
    run_raw(raw, tmp_path / "b")
    run_raw(merge(raw, seed=1), tmp_path / "c")
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    assert events(tmp_path / "a") == events(tmp_path / "b")
    assert (tmp_path / "a" / "clients.jsonl").read_text() == (tmp_path / "b" / "clients.jsonl").read_text()
    assert read_metrics(tmp_path / "a") != read_metrics(tmp_path / "c")


def test_round_lasts_until_slowest_and_deadline_drops_late_clients(tmp_path):
    raw = merge(TINY, engine={"rounds": 2}, system={"compute": {"name": "linear_spread", "spread": 50},
                                                     "time_per": "job"})
    run_raw(raw, tmp_path / "slow")
    # tau = 1 - 0.5 i/5 -> slowest client takes 1.0 per round
    assert read_metrics(tmp_path / "slow")[-1]["virtual_time"] == 2.0
    run_raw(merge(raw, engine={"deadline": 0.75}), tmp_path / "dl")
    ev = events(tmp_path / "dl")
    late = sorted({e["client"] for e in ev if e["kind"] == "drop" and e["reason"] == "deadline"})
    assert late == [0, 1, 2]  # tau = 1.0, 0.9, 0.8 > 0.75
    m = read_metrics(tmp_path / "dl")[-1]
    assert m["virtual_time"] == 1.5 and m["num_updates"] == 6 and m["num_failed"] == 6


@dataclass(frozen=True, kw_only=True)
class Saboteur:
    """Test strategy: FedAvg server, but client 1 crashes and client 2 sends NaN."""

    modes: ClassVar[tuple[str, ...]] = ("sync",)

    def init(self, params, num_clients):
        return None

    def aggregate(self, state, params, updates, info):
        step = np.mean([u.delta for u in updates], axis=0) if updates else 0.0
        return state, (params + step).astype(np.float32)

    def client_update(self, task, trainer, state):
        if task.client == 1:
            raise RuntimeError("disk on fire")
        new, loss = trainer.sgd(task.params)
        if task.client == 2:
            new = np.full_like(new, np.nan)
        return trainer.make_update(new, loss), state


def test_failing_and_malicious_clients_are_recorded_and_excluded(tmp_path):
    raw = merge(TINY, engine={"rounds": 3, "on_client_error": "drop"})
    raw["strategy"] = {"name": "test_engine:Saboteur"}
    from fedsim.runner import run

    res = run(from_mapping(raw), tmp_path)
    assert np.all(np.isfinite(res.params))
    drops = [e for e in events(tmp_path) if e["kind"] == "drop"]
    assert {e["client"] for e in drops} == {1, 2}
    assert any("RuntimeError: disk on fire" in e["reason"] for e in drops)
    assert any(e["reason"] == "non-finite values in update" for e in drops)
    last = read_metrics(tmp_path)[-1]
    assert last["num_updates"] == 3 * 4 and last["num_failed"] == 3 * 2
    assert last["test_accuracy"] > 0.5


@dataclass(frozen=True, kw_only=True)
class LyingScaffold(Scaffold):
    """Test strategy: SCAFFOLD whose client 1 omits Δc and client 2 sends a NaN Δc."""

    def client_update(self, task, trainer, state):
        update, c_i = super().client_update(task, trainer, state)
        if task.client == 1:
            return dataclasses.replace(update, up=None), c_i
        if task.client == 2:
            return dataclasses.replace(update, up=ScaffoldUp(np.full_like(update.up.delta_c, np.nan))), c_i
        return update, c_i


def test_scaffold_up_message_is_validated_end_to_end(tmp_path):
    raw = merge(TINY, engine={"rounds": 2})
    raw["strategy"] = {"name": "test_engine:LyingScaffold"}
    from fedsim.runner import run

    res = run(from_mapping(raw), tmp_path)
    assert np.all(np.isfinite(res.params))
    drops = {(e["client"], e["reason"]) for e in events(tmp_path) if e["kind"] == "drop"}
    assert drops == {(1, "up message missing or not a ScaffoldUp (got NoneType)"),
                     (2, "non-finite values in up field 'delta_c'")}


def test_validate_update_rejects_bad_shapes_and_norms():
    good = ClientUpdate(0, np.ones(4, np.float32), 3, 0)
    assert validate_update(good, 4, 0) is None
    assert "wrong shape" in validate_update(ClientUpdate(0, np.ones(5, np.float32), 3, 0), 4, 0)
    assert "claims client" in validate_update(good, 4, 1)
    assert "exceeds bound" in validate_update(good, 4, 0, max_norm=1.0)


def test_empty_rounds_advance_time_and_keep_model(tmp_path):
    raw = merge(TINY, engine={"rounds": 3, "empty_round_time": 2.5})
    raw["participation"] = {"name": "trace", "path": str(tmp_path / "t.csv")}
    (tmp_path / "t.csv").write_text("client,start,end\n0,100,200\n")
    run_raw(raw, tmp_path / "out")
    rows = read_metrics(tmp_path / "out")
    assert [r["virtual_time"] for r in rows] == [0.0, 2.5, 5.0, 7.5]
    assert rows[0]["test_loss"] == rows[-1]["test_loss"]


def test_thread_pool_executor_gives_identical_history(tmp_path):
    raw = merge(TINY, participation={"name": "bernoulli", "probs": {"name": "constant", "p": 0.7}},
                system={"compute": {"name": "exponential", "mean": 1.0}})
    run_raw(raw, tmp_path / "serial")
    run_raw(merge(raw, executor={"name": "inline", "workers": 2}), tmp_path / "pool")
    assert read_metrics(tmp_path / "serial") == read_metrics(tmp_path / "pool")
    assert events(tmp_path / "serial") == events(tmp_path / "pool")


def test_validate_update_checks_the_declared_up_message():
    up = ClientUpdate(0, np.ones(4, np.float32), 3, 0)  # SCAFFOLD update without Δc
    assert "up message missing or not a ScaffoldUp (got NoneType)" == validate_update(up, 4, 0, up_type=ScaffoldUp)
    up = ClientUpdate(0, np.ones(4, np.float32), 3, 0, up=ScaffoldUp(np.ones(3, np.float32)))
    assert "up field 'delta_c' missing or of wrong shape" == validate_update(up, 4, 0, up_type=ScaffoldUp)
    up = ClientUpdate(0, np.ones(4, np.float32), 3, 0, up=ScaffoldUp(np.array([0, np.nan, 0, 0], np.float32)))
    assert "non-finite values in up field 'delta_c'" == validate_update(up, 4, 0, up_type=ScaffoldUp)
    up = ClientUpdate(0, np.ones(4, np.float32), 3, 0, up=ScaffoldUp(np.ones(4, np.float32)))
    assert validate_update(up, 4, 0, up_type=ScaffoldUp) is None
