"""Every strategy in STRATEGIES obeys the contract of fedsim/strategy.py: it builds from its
defaults, runs the TINY scenario deterministically, and never mutates its inputs."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
from conftest import TINY, merge, read_metrics, run_raw

from fedsim.strategy import supports_sync
from fedsim.types import ClientUpdate, Oracle, RoundInfo
from strategies import STRATEGIES

SYNC = sorted(name for name, cls in STRATEGIES.items() if supports_sync(cls()))


def make(name: str):
    return STRATEGIES[name]()


def init(strategy, params: np.ndarray, n: int):
    if getattr(strategy, "uses_oracle", False):  # oracle baselines get the true facts
        oracle = Oracle(np.linspace(0.3, 1.0, n), np.ones(n), np.full(n, 10))
        return strategy.init(params, n, oracle=oracle)
    return strategy.init(params, n)


def test_table_keys_are_file_names():
    for name, cls in STRATEGIES.items():
        assert cls.__module__ == f"strategies.{name}", name
        assert cls.__doc__ and cls.__doc__.strip(), name


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_builds_from_defaults_and_is_frozen(name):
    s = make(name)
    assert dataclasses.is_dataclass(s) and type(s).__dataclass_params__.frozen  # hyperparameters only
    params = np.zeros(3, np.float32)
    init(s, params, 4)  # must not raise
    assert not params.any()


@pytest.mark.parametrize("name", SYNC)
def test_tiny_sync_run_is_deterministic(name, tmp_path):
    raw = merge(TINY, strategy={"name": name}, engine={"rounds": 3})
    run_raw(raw, tmp_path / "a")
    run_raw(raw, tmp_path / "b")
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert a == b
    assert np.isfinite(a[-1]["test_loss"])
    ca = (tmp_path / "a" / "clients.jsonl").read_text()
    assert ca == (tmp_path / "b" / "clients.jsonl").read_text()
    assert all(isinstance(json.loads(line), dict) for line in ca.splitlines())


@pytest.mark.parametrize("name", SYNC)
def test_aggregate_never_mutates_its_inputs(name):
    s = make(name)
    n, d = 4, 5
    rng = np.random.default_rng(0)
    params = rng.normal(size=d).astype(np.float32)
    state = init(s, params, n)
    cohorts = [[0, 2], [1, 2, 3], [], [3], [0, 1, 2, 3]]
    for r, cohort in enumerate(cohorts):
        updates = [ClientUpdate(k, rng.normal(size=d).astype(np.float32), 10 + k, r,
                                {"train_loss": 1.0, "fedce_minus_val": 0.5})
                   for k in cohort]
        before = pickle.dumps((state, params, updates))
        new_state, new_params = s.aggregate(state, params, updates, RoundInfo(r, n, tuple(cohort), float(r)))
        assert pickle.dumps((state, params, updates)) == before, f"{name} mutated an input in round {r}"
        assert new_params.shape == (d,) and np.all(np.isfinite(new_params))
        report = getattr(s, "client_report", None)
        if report is not None:
            rows = report(new_state)
            assert all(isinstance(k, int) and isinstance(v, dict) for k, v in rows.items())
        state, params = new_state, np.asarray(new_params, np.float32)
