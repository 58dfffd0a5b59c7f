"""Every strategy in STRATEGIES: builds from its defaults, runs a tiny scenario in each mode it
supports, deterministically, and never mutates its inputs."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from conftest import TINY, merge, read_metrics, run_raw

from fedsim import registry
from fedsim.scenario.fields import build_plugin
from fedsim.strategy.contracts import modes
from fedsim.types import ArrivalInfo, ClientUpdate, Oracle, RoundInfo

STRATEGIES = registry.table("strategy")

MODE_CHANGES = {
    "sync": {"engine": {"mode": "sync", "rounds": 3}},
    "async": {"engine": {"mode": "async", "max_versions": 4, "max_time": 50.0, "concurrency": 3},
              "system": {"compute": {"name": "uniform", "low": 0.05, "high": 0.2}}},
}
# Scalars some strategies need from their clients (FedCE's minus-model score).
METRICS = {"train_loss": 1.0, "fedce_minus_val": 0.5}
CASES = [(name, mode) for name, cls in sorted(STRATEGIES.items())
         for mode in modes(build_plugin("strategy", {"name": name}, "strategy"))]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_builds_from_defaults_and_is_documented(name):
    assert modes(build_plugin("strategy", {"name": name}, "strategy")), f"{name} supports no mode"
    assert (STRATEGIES[name].__doc__ or "").strip(), f"{name} has no docstring"


def _guard(monkeypatch, cls, method, checked_args):
    """Wrap cls.method so the arguments at `checked_args` must pickle identically before and
    after the call (no mutation of inputs during a real run)."""
    original = getattr(cls, method, None)
    if original is None:
        return

    def wrapper(self, *args):
        before = [pickle.dumps(args[i]) for i in checked_args]
        out = original(self, *args)
        assert before == [pickle.dumps(args[i]) for i in checked_args], f"{cls.__name__}.{method} mutated inputs"
        return out

    monkeypatch.setattr(cls, method, wrapper)


@pytest.mark.parametrize("name, mode", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_runs_tiny_deterministically(tmp_path, monkeypatch, name, mode):
    _guard(monkeypatch, STRATEGIES[name], "client_update", (0, 2))  # task, client_state
    _guard(monkeypatch, STRATEGIES[name], "configure", (0,))  # state
    raw = merge(TINY, strategy={"name": name}, metrics={"client_metrics": True}, **MODE_CHANGES[mode])
    run_raw(raw, tmp_path / "a")
    run_raw(raw, tmp_path / "b")
    rows = read_metrics(tmp_path / "a")
    assert rows == read_metrics(tmp_path / "b")
    assert len(rows) >= 2 and all(np.isfinite(r["test_loss"]) for r in rows)
    assert all(r["num_failed"] == 0 for r in rows), f"{name} ({mode}) had failing clients"
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
    keys = getattr(strategy, "payload_keys", ())
    ups = [ClientUpdate(k, rng.normal(size=6).astype(np.float32), 10 + k, 0, METRICS,
                        {key: rng.normal(size=6).astype(np.float32) for key in keys}) for k in range(n)]
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
        assert all(np.array_equal(u.delta, d) for u, d in zip(ups, snap[1], strict=True))
        assert pickle.dumps(state) == snap[2], "state was mutated in place"
        state = copy.deepcopy(new_state)
