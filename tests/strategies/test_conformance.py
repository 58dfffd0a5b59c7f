"""Every strategy in STRATEGIES: passes check_strategy, builds from its defaults, runs a tiny
scenario in each mode it supports, deterministically, and never mutates its inputs. Broken
strategy classes give one-line errors, at check time and when a scenario names them."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from conftest import TINY, merge, read_metrics, run_raw

from fedsim import registry
from fedsim.errors import ContractError, ScenarioError
from fedsim.scenario.fields import build_plugin
from fedsim.scenario.loading import from_mapping
from fedsim.strategy.contracts import check_strategy, declared, modes, strategy_problems
from fedsim.types import ArrivalInfo, ClientUpdate, Oracle, RoundInfo

STRATEGIES = registry.table("strategy")

MODE_CHANGES = {
    "sync": {"engine": {"mode": "sync", "rounds": 3}},
    "async": {"engine": {"mode": "async", "max_versions": 4, "max_time": 50.0, "concurrency": 3},
              "system": {"compute": {"name": "uniform", "low": 0.05, "high": 0.2}}},
}
METRICS = {"train_loss": 1.0}
CASES = [(name, mode) for name, cls in sorted(STRATEGIES.items())
         for mode in modes(build_plugin("strategy", {"name": name}, "strategy"))]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_satisfies_the_contract(name):
    cls = registry.load("strategy", name)
    assert check_strategy(cls) is cls
    for attr in ("modes", "sends", "down_type", "up_type"):  # declared on the class itself
        assert attr in vars(cls), f"{name} does not declare {attr}"
    assert "uses_oracle" in vars(cls), f"{name} does not declare uses_oracle"


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


def _message(cls, rng):
    """An instance of a strategy's up message type with random vectors and 0.5 scalars."""
    if cls is None:
        return None
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    return cls(**{k: rng.normal(size=6).astype(np.float32) if "ndarray" in str(t) else 0.5 for k, t in hints.items()})


def _init(strategy, params, n):
    if declared(strategy, "uses_oracle"):
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
    ups = [ClientUpdate(k, rng.normal(size=6).astype(np.float32), 10 + k, 0, METRICS,
                        _message(declared(strategy, "up_type"), rng), declared(strategy, "sends")) for k in range(n)]
    for _ in range(3):
        snap = (params.copy(), [u.vector.copy() for u in ups], pickle.dumps(state))
        if mode == "sync":
            new_state, new = strategy.aggregate(state, params, ups, RoundInfo(0, n, tuple(range(n)), 1.0))
        else:
            new_state = state
            for k, u in enumerate(ups):
                new_state, out = strategy.receive(new_state, params, u, ArrivalInfo(k, 1.0, n, 1, base_params=params))
            if callable(getattr(strategy, "tick", None)):
                new_state, out = strategy.tick(new_state, params, ArrivalInfo(n, 1.0, n, 0))
        assert np.array_equal(params, snap[0])
        assert all(np.array_equal(u.vector, d) for u, d in zip(ups, snap[1], strict=True))
        assert pickle.dumps(state) == snap[2], "state was mutated in place"
        state = copy.deepcopy(new_state)


# -- broken strategy classes ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Misspelt:
    """FedAvg whose client rule is misspelt: without the checker it would silently be plain SGD."""

    modes: ClassVar[tuple[str, ...]] = ("sync",)

    def init(self, params, num_clients):
        return None

    def aggregate(self, state, params, updates, info):
        return state, params

    def client_updat(self, task, trainer, client_state):
        raise AssertionError("never called")


@dataclass(frozen=True, kw_only=True)
class NoReceive:
    """Declares async mode but has no receive."""

    modes: ClassVar[tuple[str, ...]] = ("sync", "async")

    def init(self, params, num_clients):
        return None

    def aggregate(self, state, params, updates, info):
        return state, params


@dataclass(kw_only=True)
class NotFrozen:
    """A mutable dataclass."""

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    lr: float = 1.0

    def init(self, params, num_clients):
        return None

    def aggregate(self, state, params, updates, info):
        return state, params


@dataclass(frozen=True, kw_only=True)
class ConfigureWithoutDown:
    """Sends something down without declaring its type."""

    modes: ClassVar[tuple[str, ...]] = ("sync",)

    def init(self, params, num_clients):
        return None

    def aggregate(self, state, params, updates, info):
        return state, params

    def configure(self, state, client, info):
        return {"c": 1.0}


@dataclass(frozen=True, kw_only=True)
class BadArity:
    """aggregate without the info argument, an oracle it cannot receive, an unknown mode."""

    modes: ClassVar[tuple[str, ...]] = ("sync", "batch")
    uses_oracle: ClassVar[bool] = True

    def init(self, params, num_clients):
        return None

    def aggregate(self, state, params, updates):
        return state, params


@pytest.mark.parametrize("cls, expected", [
    (Misspelt, "unknown public attribute 'client_updat' (did you mean 'client_update'?)"),
    (NoReceive, "declares mode 'async' but has no receive(state, params, update, info)"),
    (NotFrozen, "is a dataclass but not frozen"),
    (ConfigureWithoutDown, "has configure but no down_type"),
    (BadArity, "unknown mode 'batch'"),
    (BadArity, "aggregate must take 4 argument(s) after self"),
    (BadArity, "uses_oracle is set but init does not accept oracle="),
])
def test_broken_classes_give_a_one_line_contract_error(cls, expected):
    with pytest.raises(ContractError) as info:
        check_strategy(cls)
    text = str(info.value)
    assert expected in text and "\n" not in text
    assert text.startswith(f"{cls.__module__}.{cls.__qualname__}: ")


def test_misspelt_hook_in_a_plugin_fails_the_scenario_in_one_line():
    raw = merge(TINY, strategy={"name": "test_conformance:Misspelt"})
    with pytest.raises(ScenarioError) as info:
        from_mapping(raw, "plugin.yaml")
    text = str(info.value)
    assert "\n" not in text and text.startswith("plugin.yaml: strategy.name: 'test_conformance:Misspelt': ")
    assert "did you mean 'client_update'?" in text


@dataclass(frozen=True)
class Untyped:
    """An up message with a field the codec cannot carry."""

    extra: dict


@dataclass(frozen=True, kw_only=True)
class BadMessages:
    """A timer without a period, an untyped up message, and a model sent by the default client."""

    modes: ClassVar[tuple[str, ...]] = ("async",)
    sends: ClassVar[str] = "model"
    up_type: ClassVar[type] = Untyped

    def init(self, params, num_clients):
        return None

    def receive(self, state, params, update, info):
        return state, None

    def tick(self, state, params, info):
        return state, params


def test_checker_reports_every_problem_of_a_class_at_once():
    problems = strategy_problems(BadMessages)
    assert "has tick but no commit_interval (the timer period)" in problems
    assert "sends a model but has no client_update (the default client sends a delta)" in problems
    assert "has an up_type but no client_update to send it" in problems
    assert any("up_type Untyped.extra must be typed np.ndarray, float, int, bool or str" in p for p in problems)
    assert strategy_problems(int) == [
        "is not a dataclass (strategies are frozen dataclasses of their hyperparameters)",
        'declares no modes (add modes: ClassVar[tuple[str, ...]] = ("sync",) and/or "async")',
    ]


def test_oracle_may_be_a_property_and_modes_follow_the_declaration():
    from strategies.fedfix import FedFix

    assert check_strategy(FedFix) is FedFix  # uses_oracle is a property; init takes oracle=
    assert FedFix().uses_oracle and not FedFix(weighting="identical").uses_oracle
    assert modes(FedFix) == ("async",) and modes(NoReceive) == ("sync", "async")
    assert modes(object()) == ()
