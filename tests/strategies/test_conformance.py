"""Every strategy in STRATEGIES: builds from its defaults, runs a tiny scenario in each mode it
supports, deterministically, and never mutates its inputs."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from conftest import TINY, merge, read_metrics, run_raw
from fedsim.config import build_plugin
from fedsim.strategy import modes
from fedsim.types import ArrivalInfo, ClientUpdate, Oracle, RoundInfo
from strategies import STRATEGIES

MODE_CHANGES = {
    "sync": {"engine": {"mode": "sync", "rounds": 3}},
    "async": {"engine": {"mode": "async", "max_versions": 4, "max_time": 50.0, "concurrency": 3},
              "system": {"compute": {"name": "uniform", "low": 0.05, "high": 0.2}}},
}
CASES = [(name, mode) for name, cls in sorted(STRATEGIES.items())
         for mode in modes(build_plugin("strategy", {"name": name}, "strategy"))]


def test_every_strategy_supports_a_mode():
    for name in STRATEGIES:
        assert modes(build_plugin("strategy", {"name": name}, "strategy")), name


@pytest.mark.parametrize("name, mode", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_runs_tiny_deterministically(tmp_path, name, mode):
    raw = merge(TINY, strategy={"name": name}, metrics={"client_metrics": True}, **MODE_CHANGES[mode])
    run_raw(raw, tmp_path / "a")
    run_raw(raw, tmp_path / "b")
    rows = read_metrics(tmp_path / "a")
    assert rows == read_metrics(tmp_path / "b")
    assert len(rows) >= 2 and all(np.isfinite(r["test_loss"]) for r in rows)
    assert (tmp_path / "a" / "events.jsonl").read_text() == (tmp_path / "b" / "events.jsonl").read_text()


def _init(strategy, params, n):
    if getattr(strategy, "uses_oracle", False):
        oracle = Oracle(np.full(n, 0.5), np.linspace(1.0, 0.2, n), np.full(n, 10))
        return strategy.init(params, n, oracle=oracle)
    return strategy.init(params, n)


@pytest.mark.parametrize("name, mode", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_does_not_mutate_inputs(name, mode):
    strategy = build_plugin("strategy", {"name": name}, "strategy")
    rng = np.random.default_rng(0)
    n = 4
    params = rng.normal(size=6).astype(np.float32)
    state = _init(strategy, params, n)
    ups = [ClientUpdate(k, rng.normal(size=6).astype(np.float32), 10 + k, 0, {"train_loss": 1.0}) for k in range(n)]
    for _ in range(3):
        snap = (params.copy(), [u.delta.copy() for u in ups], pickle.dumps(state))
        if mode == "sync":
            new_state, new = strategy.aggregate(state, params, ups, RoundInfo(0, n, tuple(range(n)), 1.0))
        else:
            new_state = state
            for k, u in enumerate(ups):
                new_state, out = strategy.receive(new_state, params, u, ArrivalInfo(k, 1.0, n, 1, base_params=params))
            if callable(getattr(strategy, "tick", None)):
                new_state, out = strategy.tick(new_state, params, ArrivalInfo(n, 1.0, n, 0))
        assert np.array_equal(params, snap[0])
        assert all(np.array_equal(u.delta, d) for u, d in zip(ups, snap[1]))
        assert pickle.dumps(state) == snap[2], "state was mutated in place"
        state = copy.deepcopy(new_state)
