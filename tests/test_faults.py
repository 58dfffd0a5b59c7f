"""Failure injection, update validation and robust aggregation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import LINREG, TINY, merge, read_metrics, run_raw

from fedsim.engine.robust import (
    Median,
    NoRobust,
    TrimmedMean,
    coordinate_median,
    trimmed_mean,
)
from fedsim.engine.validation import validate_update
from fedsim.errors import ScenarioError
from fedsim.scenario.loading import from_mapping, load
from fedsim.scenario.schema import ByzantineConfig, FaultsConfig
from fedsim.types import ClientUpdate
from fedsim.world.faults import Faults

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Msg:
    """A typed up message with one vector field (like SCAFFOLD's ScaffoldUp)."""

    c: np.ndarray


def _up(client: int, delta, n: int = 1, c=None) -> ClientUpdate:
    return ClientUpdate(client, np.asarray(delta, dtype=np.float32), n, 0, {}, None if c is None else Msg(c))


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


# --- robust aggregation: hand-computed values -----------------------------------------------


def test_coordinate_median_and_trimmed_mean_by_hand():
    s = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, -30.0], [100.0, 40.0]])
    # even m = 4: median = mean of the two middle values per coordinate
    # coord 0 sorted [1, 2, 3, 100] -> (2+3)/2 = 2.5;  coord 1 sorted [-30, 10, 20, 40] -> 15
    assert coordinate_median(s).tolist() == [2.5, 15.0]
    # β = 0.25: drop ⌊0.25·4⌋ = 1 value at each end -> same middle pair
    assert trimmed_mean(s, 0.25).tolist() == [2.5, 15.0]
    # β = 0.2: ⌊0.8⌋ = 0 dropped -> the plain mean (106/4, 40/4)
    assert trimmed_mean(s, 0.2).tolist() == [26.5, 10.0]
    # odd m = 3: the middle value
    assert coordinate_median(np.array([[1.0, 5.0], [2.0, -1.0], [9.0, 0.0]])).tolist() == [2.0, 0.0]
    # m = 5, β = 0.2: drop 1 each end; coord sorted [-50, 1, 2, 3, 1000] -> (1+2+3)/3 = 2
    assert trimmed_mean(np.array([[1.0], [1000.0], [2.0], [-50.0], [3.0]]), 0.2).tolist() == [2.0]


def test_robust_wrapper_replaces_vectors_keeps_the_rest():
    ups = [_up(0, [1, 10], 5, c=np.array([1.0])), _up(1, [2, 20], 7, c=np.array([3.0])),
           _up(2, [3, -30], 9, c=np.array([100.0]))]
    out = Median().apply(ups)
    assert [u.delta.tolist() for u in out] == [[2.0, 10.0]] * 3  # coordinate-wise median
    assert [u.up.c.tolist() for u in out] == [[3.0]] * 3  # every ndarray field of the up message too
    assert [(u.client, u.num_examples) for u in out] == [(0, 5), (1, 7), (2, 9)]
    assert ups[0].delta.tolist() == [1.0, 10.0]  # inputs untouched
    assert TrimmedMean(trim=0.34).apply(ups)[0].delta.tolist() == [2.0, 10.0]  # ⌊0.34·3⌋ = 1 each end
    assert NoRobust().apply(ups) == ups
    assert Median().apply(ups[:1]) == ups[:1]  # a cohort of one is its own centre


# --- update validation ------------------------------------------------------------------------


@pytest.mark.parametrize("update,up_type,expected", [
    (None, None, "no update"),
    (_up(1, [0, 0, 0]), None, "claims client 1"),
    (_up(0, [0, 0]), None, "wrong shape"),
    (ClientUpdate(0, np.zeros(3, dtype=np.int64), 1, 0), None, "dtype"),
    (_up(0, [0, np.nan, 0]), None, "non-finite values in update"),
    (_up(0, [0, np.inf, 0]), None, "non-finite values in update"),
    (_up(0, [0, 0, 0]), Msg, "up message missing or not a Msg"),
    (_up(0, [0, 0, 0], c=np.ones(3)), None, "unexpected up message Msg"),
    (_up(0, [0, 0, 0], c=np.array([0.0, np.nan, 0.0])), Msg, "non-finite values in up field 'c'"),
    (_up(0, [0, 0, 0], c=np.ones(2)), Msg, "up field 'c' missing or of wrong shape"),
    (_up(0, [0, 0, 0], c="junk"), Msg, "up field 'c' missing or of wrong shape"),
    (_up(0, [0, 0, 0], c=np.ones(3, dtype=np.int64)), Msg, "up field 'c' is not a float array"),
    (ClientUpdate(0, np.zeros(3, np.float32), 1, 0, kind="model"), None, "carries a 'model'"),
    (_up(0, [3, 4, 0]), None, "update norm 5 exceeds bound 4.9"),
    (_up(0, [0, 0, 0], -1), None, "bad num_examples"),
])
def test_validate_update_reasons(update, up_type, expected):
    why = validate_update(update, 3, 0, max_norm=4.9, up_type=up_type)
    assert why is not None and expected in why


def test_validate_update_accepts_good_update():
    assert validate_update(_up(0, [3, 4, 0]), 3, 0, max_norm=5.0) is None  # ‖Δ‖ = 5 is within the bound
    assert validate_update(_up(0, [3, 4, 0]), 3, 0) is None


def test_model_update_norm_bound_acts_on_model_minus_base():
    # base z = [10, 0, 0], model w = [13, 4, 0]: ‖w‖ = 13.6 but the move ‖w − z‖ = ‖[3, 4, 0]‖ = 5
    base = np.array([10.0, 0.0, 0.0], np.float32)
    up = ClientUpdate(0, np.array([13.0, 4.0, 0.0], np.float32), 1, 0, kind="model")
    assert validate_update(up, 3, 0, max_norm=5.0, sends="model", base=base) is None
    assert "update norm 5 exceeds bound 4.9" in validate_update(up, 3, 0, max_norm=4.9, sends="model", base=base)
    assert "carries a 'delta'" in validate_update(_up(0, [0, 0, 0]), 3, 0, sends="model", base=base)


def test_sign_flip_of_a_model_flips_around_the_base():
    # base z = [1, 1], model w = [2, -1]: the proposed move is w − z = [1, −2]; with scale 3 the
    # attacker sends z − 3(w − z) = [1 − 3, 1 + 6] = [−2, 7] (not −3w = [−6, 3]).
    f = Faults(FaultsConfig(byzantine=ByzantineConfig(fraction=1.0, kind="sign_flip", scale=3.0)), 0, 2)
    up = ClientUpdate(1, np.array([2.0, -1.0], np.float32), 1, 0, kind="model")
    sent, fault = f.corrupt(up, 0, np.array([1.0, 1.0], np.float32))
    assert fault == "byzantine" and sent.kind == "model" and sent.model.tolist() == [-2.0, 7.0]
    scaled = Faults(FaultsConfig(byzantine=ByzantineConfig(fraction=1.0, kind="scaled", scale=2.0)), 0, 2)
    # z + 2(w − z) = [1 + 2, 1 − 4]
    assert scaled.corrupt(up, 0, np.array([1.0, 1.0], np.float32))[0].model.tolist() == [3.0, -3.0]


# --- the injector -------------------------------------------------------------------------


def test_faults_are_deterministic_and_byzantine_transforms_exact():
    cfg = FaultsConfig(client_crash_prob=0.3, byzantine=ByzantineConfig(fraction=0.25, kind="sign_flip", scale=3.0))
    a, b = Faults(cfg, 7, 40), Faults(cfg, 7, 40)
    assert a.byzantine.sum() == 10 and (a.byzantine == b.byzantine).all()  # round(0.25·40) fixed clients
    hits = [a.on_dispatch(c, d, 0.0, 1.0, 2.0) for c in range(40) for d in range(5)]
    assert hits == [b.on_dispatch(c, d, 0.0, 1.0, 2.0) for c in range(40) for d in range(5)]
    crashed = [h for h in hits if h is not None]
    assert 0.15 < len(crashed) / len(hits) < 0.45 and all(0.0 <= t <= 1.0 for _, t in crashed)
    bad = int(np.flatnonzero(a.byzantine)[0])
    good = int(np.flatnonzero(~a.byzantine)[0])
    sent, fault = a.corrupt(_up(bad, [1.0, -2.0]), 0)
    assert fault == "byzantine" and sent.delta.tolist() == [-3.0, 6.0]  # −scale·Δ
    honest = _up(good, [1.0, -2.0])
    assert a.corrupt(honest, 0) == (honest, None)  # the very same object, untouched
    scaled = Faults(FaultsConfig(byzantine=ByzantineConfig(fraction=1.0, kind="scaled", scale=2.5)), 0, 3)
    assert scaled.corrupt(_up(1, [1.0, -2.0]), 4)[0].delta.tolist() == [2.5, -5.0]  # scale·Δ
    rnd = Faults(FaultsConfig(byzantine=ByzantineConfig(fraction=1.0, kind="random", scale=2.0)), 0, 3)
    r1, r2 = rnd.corrupt(_up(1, np.zeros(1000)), 4)[0].delta, rnd.corrupt(_up(1, np.zeros(1000)), 4)[0].delta
    assert (r1 == r2).all() and 1.8 < r1.std() < 2.2  # N(0, scale²), same draw for the same job
    straggle = Faults(FaultsConfig(straggler_timeout=1.5), 0, 3)
    assert straggle.on_dispatch(0, 0, 10.0, 11.0, 12.0) == ("straggler timeout", 11.5)
    assert straggle.on_dispatch(0, 0, 10.0, 11.0, 11.4) is None


# --- end to end ------------------------------------------------------------------------------


def test_training_converges_with_crashes_and_nan_updates(tmp_path):
    """20% of jobs crash, 10% send NaN updates: the server drops them and still learns."""
    base = merge(TINY, data={"num_clients": 10}, engine={"rounds": 20}, metrics={"eval_every": 20})
    faulty = merge(base, faults={"client_crash_prob": 0.2, "nan_update_prob": 0.1})
    run_raw(base, tmp_path / "clean")
    run_raw(faulty, tmp_path / "faulty")
    clean, rows = read_metrics(tmp_path / "clean")[-1], read_metrics(tmp_path / "faulty")
    # Clean run reaches ~0.90 on this 4-class mixture; chance is 0.25 and round 0 is ~0.3.
    assert rows[-1]["test_accuracy"] >= 0.85
    assert rows[-1]["test_accuracy"] >= clean["test_accuracy"] - 0.05
    drops = [e for e in _events(tmp_path / "faulty") if e["kind"] == "drop"]
    reasons = {e["reason"] for e in drops}
    assert reasons == {"client crashed", "non-finite values in update"}
    assert all(e.get("fault") == "nan" for e in drops if e["reason"].startswith("non-finite"))
    assert rows[-1]["num_failed"] == len(drops) and 25 <= len(drops) <= 65  # ~30% of 200 jobs
    assert rows[-1]["num_updates"] + rows[-1]["num_failed"] == 200


def test_linear_regression_with_faults_stays_near_optimum(tmp_path):
    raw = merge(LINREG, engine={"rounds": 100}, metrics={"eval_every": 100},
                faults={"client_crash_prob": 0.2, "nan_update_prob": 0.1})
    run_raw(raw, tmp_path)
    # Clean: 5e-4. Random 72% cohorts make FedAvg stochastic: measured 0.069.
    assert read_metrics(tmp_path)[-1]["optimum_distance"] < 0.2


def test_median_beats_fedavg_under_sign_flip_attack(tmp_path):
    raw = merge(LINREG, engine={"rounds": 100}, metrics={"eval_every": 100},
                data={"num_clients": 20, "dataset": {"name": "linear_regression", "dim": 5,
                                                     "samples_per_client": 20, "heterogeneity": 0.1}},
                faults={"byzantine": {"fraction": 0.2, "kind": "sign_flip", "scale": 5.0}})
    run_raw(raw, tmp_path / "fedavg")
    run_raw(merge(raw, robust={"name": "median"}), tmp_path / "median")
    run_raw(merge(raw, robust={"name": "trimmed_mean", "trim": 0.25}), tmp_path / "trimmed")
    plain = read_metrics(tmp_path / "fedavg")[-1]["optimum_distance"]
    med = read_metrics(tmp_path / "median")[-1]["optimum_distance"]
    trim = read_metrics(tmp_path / "trimmed")[-1]["optimum_distance"]
    print(f"optimum distance: fedavg {plain:.3g}, median {med:.3g}, trimmed {trim:.3g}")
    # 4 of 20 clients send −5Δ: the mean step is ≈ (0.8 − 0.2·5)·Δ = −0.2·Δ, FedAvg ascends
    assert med < 0.3 and trim < 0.3
    assert plain > 10 * med and plain > 10 * trim


def test_norm_bound_rejects_random_updates_and_logs_reason(tmp_path):
    # heterogeneity 0: the honest clients' optimum is (up to label noise) everyone's optimum
    raw = merge(LINREG, engine={"rounds": 60}, metrics={"eval_every": 60},
                data={"dataset": {"name": "linear_regression", "dim": 5, "heterogeneity": 0.0}},
                faults={"byzantine": {"fraction": 0.2, "kind": "random", "scale": 100.0}},  # ‖Δ‖ ≈ 245
                validation={"max_norm": 50.0})
    run_raw(raw, tmp_path)
    drops = [e for e in _events(tmp_path) if e["kind"] == "drop"]
    assert drops and all("exceeds bound 50" in e["reason"] for e in drops)
    assert {e["client"] for e in drops} <= set(range(10)) and len({e["client"] for e in drops}) == 2
    assert read_metrics(tmp_path)[-1]["optimum_distance"] < 0.05  # the honest 8 clients still converge
    run_raw(merge(raw, validation={"max_norm": None}), tmp_path / "unbounded")
    assert read_metrics(tmp_path / "unbounded")[-1]["optimum_distance"] > 1.0  # without it: wrecked


def test_straggler_timeout_bounds_round_length(tmp_path):
    raw = merge(TINY, engine={"rounds": 4}, faults={"straggler_timeout": 6.0},
                system={"compute": {"name": "exponential", "mean": 1.0}})  # 5 local steps → mean 5 s
    run_raw(raw, tmp_path)
    ev = _events(tmp_path)
    late = [e for e in ev if e["kind"] == "drop"]
    assert late and all(e["reason"] == "straggler timeout" for e in late)
    commits = [e["virtual_time"] for e in ev if e["kind"] == "commit"]
    assert all(b - a <= 6.0 + 1e-9 for a, b in zip([0.0] + commits, commits, strict=False))


def test_faults_identical_on_serial_and_threaded_executors(tmp_path):
    raw = merge(TINY, engine={"rounds": 4}, faults={"client_crash_prob": 0.3, "nan_update_prob": 0.2,
                                                     "byzantine": {"fraction": 0.3, "kind": "random"}},
                robust={"name": "median"})
    run_raw(raw, tmp_path / "serial")
    run_raw(merge(raw, executor={"name": "inline", "workers": 2}), tmp_path / "threads")
    assert read_metrics(tmp_path / "serial") == read_metrics(tmp_path / "threads")
    assert _events(tmp_path / "serial") == _events(tmp_path / "threads")


def test_faults_scenario_file_loads_and_async_robust_is_refused():
    sc = load(ROOT / "scenarios" / "faults.yaml")
    assert sc.faults.client_crash_prob == 0.2 and sc.faults.byzantine.kind == "sign_flip"
    assert type(sc.robust).__name__ == "TrimmedMean" and sc.validation.max_norm is not None
    with pytest.raises(ScenarioError, match="robust.name"):
        from_mapping(merge(TINY, engine={"mode": "async", "max_versions": 5}, robust={"name": "median"}))
    # async checkpoints are supported (tests/test_checkpoint.py)
    sc = from_mapping(merge(TINY, engine={"mode": "async", "max_versions": 5}, strategy={"name": "fedbuff"},
                            checkpoint={"every": 2}))
    assert sc.checkpoint.every == 2


def test_faults_in_async_mode_are_logged_and_training_goes_on(tmp_path):
    raw = merge(TINY, engine={"mode": "async", "concurrency": 3, "max_versions": 30},
                strategy={"name": "async_fedavg"},
                system={"compute": {"name": "lognormal", "mean": 1.0, "sigma": 0.5}},
                faults={"client_crash_prob": 0.2, "nan_update_prob": 0.1, "straggler_timeout": 8.0},
                metrics={"eval_every": 10})
    run_raw(raw, tmp_path)
    rows = read_metrics(tmp_path)
    drops = [e for e in _events(tmp_path) if e["kind"] == "drop"]
    assert {"client crashed", "non-finite values in update"} <= {e["reason"] for e in drops}
    assert rows[-1]["version"] == 30 and rows[-1]["num_failed"] == len(drops)
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"] + 0.2
