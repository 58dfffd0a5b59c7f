"""Every strategy in the table: builds from its defaults, runs the TINY scenario in each
mode it supports, is deterministic, and never mutates what it is given."""

import pickle

import pytest
from conftest import TINY, merge, read_metrics, run_raw

from fedsim.strategy import modes
from strategies import STRATEGIES


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_builds_from_defaults(name):
    strategy = STRATEGIES[name]()
    assert modes(strategy), f"{name} supports neither sync nor async"
    assert (STRATEGIES[name].__doc__ or "").strip(), f"{name} has no docstring"


def _guard(monkeypatch, cls, method, checked_args):
    """Wrap cls.method so that the arguments at `checked_args` positions are pickled before
    and after the call and must be byte-identical (no mutation of inputs)."""
    original = getattr(cls, method, None)
    if original is None:
        return

    def wrapper(self, *args):
        before = [pickle.dumps(args[i]) for i in checked_args]
        out = original(self, *args)
        after = [pickle.dumps(args[i]) for i in checked_args]
        assert before == after, f"{cls.__name__}.{method} mutated its inputs"
        return out

    monkeypatch.setattr(cls, method, wrapper)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_runs_tiny_deterministically_without_mutating_inputs(name, tmp_path, monkeypatch):
    cls = STRATEGIES[name]
    _guard(monkeypatch, cls, "aggregate", (0, 1, 2))  # state, params, updates
    _guard(monkeypatch, cls, "client_update", (0, 2))  # task, client_state
    _guard(monkeypatch, cls, "configure", (0,))  # state
    for mode in modes(cls()):
        raw = merge(TINY, strategy={"name": name}, engine={"mode": mode, "rounds": 3},
                    participation={"name": "uniform", "k": 4})
        run_raw(raw, tmp_path / f"{mode}-a")
        run_raw(raw, tmp_path / f"{mode}-b")
        first, second = read_metrics(tmp_path / f"{mode}-a"), read_metrics(tmp_path / f"{mode}-b")
        assert first == second, f"{name} ({mode}) is not deterministic"
        assert all(r["num_failed"] == 0 for r in first), f"{name} ({mode}) had failing clients"
        assert first[-1]["test_loss"] == first[-1]["test_loss"]  # not NaN
