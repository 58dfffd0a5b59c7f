"""Async mode end to end (torch): determinism across executors, the FedFix paper's bias finding
on linear regression, scenario files and config errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import LINREG, TINY, merge, read_metrics, run_raw

from fedsim.errors import ScenarioError
from fedsim.runner import build_data
from fedsim.scenario.loading import from_mapping, load

ROOT = Path(__file__).resolve().parents[1]

ASYNC_TINY = merge(
    TINY,
    participation={"name": "bernoulli", "probs": {"name": "uniform", "low": 0.4, "high": 0.9}},
    system={"compute": {"name": "lognormal", "mean": 0.2, "sigma": 0.8}, "jitter": 0.3, "dropout_prob": 0.1},
    engine={"mode": "async", "concurrency": 4, "max_versions": 8, "slot": 0.5, "drop_offline": True},
    strategy={"name": "fedbuff", "buffer_size": 2, "staleness": "polynomial"},
    metrics={"eval_every": 2, "eval_every_time": 2.0},
)


def _events(out: Path) -> str:
    return (out / "events.jsonl").read_text()


@pytest.mark.parametrize("redispatch", ["sample", "on_commit"])
def test_same_history_serial_and_thread_pool(tmp_path, redispatch):
    raw = merge(ASYNC_TINY, engine={"redispatch": redispatch})
    run_raw(merge(raw, executor={"name": "inline", "workers": 0}), tmp_path / "w0")
    run_raw(merge(raw, executor={"name": "inline", "workers": 2}), tmp_path / "w2")
    ev = _events(tmp_path / "w0")
    assert ev == _events(tmp_path / "w2")
    assert '"kind":"drop"' in ev and '"staleness":1' in ev  # the scenario exercises drops and staleness
    assert read_metrics(tmp_path / "w0") == read_metrics(tmp_path / "w2")
    assert (tmp_path / "w0" / "clients.jsonl").read_text() == (tmp_path / "w2" / "clients.jsonl").read_text()


def test_async_metrics_have_version_and_virtual_time(tmp_path):
    run_raw(ASYNC_TINY, tmp_path)
    rows = read_metrics(tmp_path)
    assert all("version" in r and "virtual_time" in r and "round" not in r for r in rows)
    assert rows[0]["version"] == 0 and rows[-1]["version"] == 8
    times = [r["virtual_time"] for r in rows]
    assert times == sorted(times)


# --- the FedFix paper's finding on linear regression (Fraboni et al., JMLR 2023: surrogate Σ q_k F_k) ---
# F-80 speeds (client 0 slowest, client 9 five times faster), every client with its own optimum,
# one full-batch GD step per job, Fraboni's schedules (on_commit, concurrency = N), 60 time units.

T = 60.0
LIN_ASYNC = merge(
    LINREG,
    client={"lr": 0.1},
    system={"compute": {"name": "linear_spread", "spread": 80}, "time_per": "job"},
    engine={"mode": "async", "max_time": T, "concurrency": 10, "redispatch": "on_commit"},
    metrics={"eval_every": None, "eval_every_time": T / 20},
)


def _tail_distance(out: Path) -> float:
    rows = read_metrics(out)
    return float(np.mean([r["optimum_distance"] for r in rows if r["virtual_time"] >= T / 2]))


def _weighted_optimum(raw, q: np.ndarray) -> np.ndarray:
    """argmin Σ q_k F_k for the run's data (closed form, `linear` layout: weights then bias)."""
    data = build_data(from_mapping(raw))
    a, b = 0.0, 0.0
    for k in range(data.num_clients):
        sl = data.train_slice(k)
        x = np.c_[data.x_train[sl].astype(np.float64), np.ones(sl.stop - sl.start)]
        y = data.y_train[sl].astype(np.float64)
        a, b = a + q[k] * x.T @ x / len(y), b + q[k] * x.T @ y / len(y)
    return np.linalg.solve(a, b), data.optimum


def test_async_fedavg_is_biased_to_fast_clients_fedfix_and_fedbuff_are_not(tmp_path):
    runs = {
        # α = 0.2 damps the per-arrival noise; the biased limit does not depend on α
        "async_identical": {"name": "async_fedavg", "alpha": 0.2},
        "fedfix_weight": {"name": "fedfix", "commit_interval": 0.5},
        "fedbuff_fraboni": {"name": "fedbuff", "buffer_size": 5, "buffer_reduction": "sum", "weighting": "fraboni",
                            "server_lr": 0.5},
    }
    dist = {}
    for name, strategy in runs.items():
        run_raw(merge(LIN_ASYNC, strategy=strategy), tmp_path / name)
        dist[name] = _tail_distance(tmp_path / name)
    # Prediction: identical weights converge to the optimum of Σ q_k F_k with q_k ∝ 1/τ_k (Fraboni et al.).
    tau = 1 - 0.8 * np.arange(10) / 9
    w_q, w_star = _weighted_optimum(merge(LIN_ASYNC, strategy=runs["fedfix_weight"]), (1 / tau) / (1 / tau).sum())
    predicted = float(np.linalg.norm(w_q - w_star))  # ≈ 0.31 for this seed
    assert predicted > 0.2
    assert abs(dist["async_identical"] - predicted) < 0.25 * predicted
    assert dist["fedfix_weight"] < 0.03
    assert dist["fedbuff_fraboni"] < 0.08
    assert dist["async_identical"] > 4 * max(dist["fedfix_weight"], dist["fedbuff_fraboni"])


# --- scenario files --------------------------------------------------------------------------------

ASYNC_SCENARIOS = sorted((ROOT / "scenarios").glob("async_*.yaml"))


def _documented_overrides(path: Path) -> list[list[str]]:
    """Override lists of the `fedsim run <this file> a.b=c ...` lines in the file's header."""
    out = []
    for line in path.read_text().splitlines():
        m = re.match(r"#\s+fedsim run (\S+)(.*)$", line)
        if m and m.group(1).endswith(path.name):
            out.append([tok for tok in m.group(2).split() if "=" in tok])
    return out


def test_async_scenarios_exist():
    names = {p.name for p in ASYNC_SCENARIOS}
    assert {"async_comparison.yaml", "async_linreg_fedfix.yaml"} <= names


@pytest.mark.parametrize("path", ASYNC_SCENARIOS, ids=lambda p: p.name)
def test_async_scenario_and_documented_variants_load(path):
    variants = _documented_overrides(path)
    assert variants, f"{path.name}: header documents no `fedsim run` command"
    seen = set()
    for overrides in variants:
        sc = load(path, overrides)
        seen.add((sc.engine.mode, repr(sc.strategy)))
    assert len(seen) == len(variants)  # each documented line runs a different algorithm


def test_mode_and_stop_condition_errors():
    with pytest.raises(ScenarioError, match=r"engine\.mode.*async_fedavg"):
        from_mapping(merge(TINY, strategy={"name": "async_fedavg"}))
    with pytest.raises(ScenarioError, match=r"engine\.max_versions.*stop condition"):
        from_mapping(merge(TINY, engine={"mode": "async"}, strategy={"name": "fedbuff"}))
    with pytest.raises(ScenarioError, match=r"engine\.redispatch"):
        from_mapping(merge(ASYNC_TINY, engine={"redispatch": "later"}))


def test_on_commit_deadlock_and_bad_strategy_setup_are_one_line_errors(tmp_path):
    from fedsim.errors import RunError

    # on_commit, 3 jobs in flight, a buffer of 5: the three clients wait for a commit forever
    raw = merge(ASYNC_TINY, participation={"name": "full"}, system={"dropout_prob": 0.0},
                engine={"redispatch": "on_commit", "concurrency": 3, "drop_offline": False},
                strategy={"name": "fedbuff", "buffer_size": 5})
    with pytest.raises(RunError, match="engine: stalled at virtual time .*concurrency"):
        run_raw(raw, tmp_path / "a")
    # found by validation now (strategy.check_clients), before any data is built
    with pytest.raises(ScenarioError, match=r"strategy\.buffer_size: 7 is larger than .*never fill"):
        run_raw(merge(ASYNC_TINY, strategy={"name": "fedbuff", "buffer_size": 7, "one_per_client": True}),
                tmp_path / "b")


@pytest.mark.parametrize("failure", [{"faults": {"client_crash_prob": 1.0}}, {"system": {"dropout_prob": 1.0}}],
                         ids=["every-client-crashes", "every-client-drops-out"])
def test_async_run_where_nothing_arrives_stops_with_one_line(tmp_path, failure):
    """Versions never advance when every job fails; without max_time the event loop used to run
    forever. It stops after engine.max_failed_streak failed jobs in a row, with one line."""
    from fedsim.errors import RunError

    raw = merge(TINY, engine={"mode": "async", "max_versions": 5, "concurrency": 2, "max_failed_streak": 50},
                strategy={"name": "fedbuff", "buffer_size": 2}, **failure)
    with pytest.raises(RunError, match=r"^engine: no update arrived in the last 50 jobs"):
        run_raw(raw, tmp_path / "run")
