"""Plugins for hand-placed bias experiments: grouped least-squares optima, given per-client
compute times, and a participation trace keyed by round (hand-computed values)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fedsim.data.datasets import LeastSquaresGroups
from fedsim.errors import ScenarioError
from fedsim.scenario.loading import load
from fedsim.world import participation as P
from fedsim.world.system import PerClient

ROOT = Path(__file__).resolve().parents[1]


def test_least_squares_groups_places_each_clients_optimum():
    ds = LeastSquaresGroups(optima=((1.0, 2.0), (-1.0, 0.5)), sizes=(2, 3), samples_per_client=40)
    data = ds.load(5, np.random.default_rng(0))
    wanted = [(1.0, 2.0)] * 2 + [(-1.0, 0.5)] * 3
    for k in range(5):
        lo, hi = data.offsets[k], data.offsets[k + 1]
        x = np.c_[data.x[lo:hi].astype(np.float64), np.ones(hi - lo)]
        w, *_ = np.linalg.lstsq(x, data.y[lo:hi].astype(np.float64), rcond=None)
        np.testing.assert_allclose(w, [*wanted[k], 0.0], atol=1e-5)  # noise 0: exactly w_g, bias 0
    # closed form: (Σ_k A_k/n_k)^-1 Σ_k A_k w_k/n_k, with A_k = X̃_kᵀX̃_k (uniform p_k)
    a = sum(np.c_[data.x[data.offsets[k]:data.offsets[k + 1]], np.ones(40)].astype(np.float64).T
            @ np.c_[data.x[data.offsets[k]:data.offsets[k + 1]], np.ones(40)].astype(np.float64) / 40
            for k in range(5))
    b = sum(np.c_[data.x[data.offsets[k]:data.offsets[k + 1]], np.ones(40)].astype(np.float64).T
            @ data.y[data.offsets[k]:data.offsets[k + 1]].astype(np.float64) / 40 for k in range(5))
    np.testing.assert_allclose(data.optimum, np.linalg.solve(a, b), rtol=1e-4, atol=1e-5)
    big = LeastSquaresGroups(optima=((1.0,), (-1.0,)), sizes=(2, 3), samples_per_client=20000)
    np.testing.assert_allclose(big.load(5, np.random.default_rng(1)).optimum, [(2 - 3) / 5, 0.0], atol=0.02)


def test_per_client_compute_times_by_group_or_client():
    assert PerClient(times=(1.0, 0.2), sizes=(2, 3)).draw(5, np.random.default_rng(0)).tolist() == \
        [1.0, 1.0, 0.2, 0.2, 0.2]
    assert PerClient(times=(0.5, 0.25, 1.0)).draw(3, np.random.default_rng(0)).tolist() == [0.5, 0.25, 1.0]
    assert PerClient(times=(1.0,), sizes=(3,)).check_clients(4) == ["sizes: give 3 clients, not data.num_clients (4)"]
    with pytest.raises(ValueError, match="every compute time must be > 0"):
        PerClient(times=(1.0, 0.0)).validate()


def ctx(n):
    return P.Context(n, np.random.default_rng(0), np.random.default_rng(1), lambda: np.full((n, 2), 0.5))


def test_trace_by_round(tmp_path):
    f = tmp_path / "r.csv"
    f.write_text("client,round\n0,0\n1,0\n2,1\n")
    proc = P.Trace(path=str(f), by="round").process(ctx(3))
    # the virtual time is ignored: only the round counts
    assert proc.online(0, 123.0).tolist() == [True, True, False]
    assert proc.online(1, 0.0).tolist() == [False, False, True]
    assert proc.online(2, 1.0).tolist() == [False, False, False]
    g = tmp_path / "s.csv"
    g.write_text("client,start,end\n0,1,3\n")  # rounds 1 and 2
    proc = P.Trace(path=str(g), by="round").process(ctx(1))
    assert [bool(proc.online(r, 0.0)[0]) for r in range(4)] == [False, True, True, False]
    by_time = P.Trace(path=str(g)).process(ctx(1))  # the default stays virtual time
    assert [bool(by_time.online(0, t)[0]) for t in (0.5, 1.0, 2.9, 3.0)] == [False, True, True, False]


def _scenario(tmp_path, **changes):
    raw = yaml.safe_load((ROOT / "scenarios" / "bias_groups.yaml").read_text())
    for key, value in changes.items():
        block, _, field = key.partition(".")
        raw[block][field] = value
    (tmp_path / "bias_groups_trace.csv").write_text((ROOT / "scenarios" / "bias_groups_trace.csv").read_text())
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("changes, expected", [
    ({"data.num_clients": 12}, "data.dataset.sizes: add up to 10, not data.num_clients (12)"),
    ({"data.num_clients": 12}, "system.compute.sizes: give 10 clients, not data.num_clients (12)"),
    ({"engine.mode": "async", "engine.max_time": 5.0}, "participation.by: a trace keyed by round needs engine.mode"),
])
def test_validation_finds_client_count_and_mode_mistakes(tmp_path, changes, expected):
    with pytest.raises(ScenarioError) as err:
        load(_scenario(tmp_path, **changes))
    assert expected in str(err.value)


def test_bias_groups_scenario_runs_and_follows_the_trace(tmp_path):
    import json

    from fedsim.runner import run

    p = _scenario(tmp_path, **{"engine.rounds": 3, "metrics.eval_every": 1})
    (tmp_path / "bias_groups_trace.csv").write_text("client,round\n" + "".join(f"{c},0\n" for c in range(10))
                                                     + "".join(f"{c},1\n" for c in range(5, 10)))
    out = tmp_path / "out"
    run(load(p), out)
    ev = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    arrivals = [e for e in ev if e["kind"] == "arrive"]  # sync: `version` is the round
    by_round = {r: sorted(e["client"] for e in arrivals if e["version"] == r) for r in range(3)}
    assert by_round == {0: list(range(10)), 1: [5, 6, 7, 8, 9], 2: []}
    # the fast group's jobs take 0.2, the slow group's 1.0: round 0 ends at 1.0, round 1 at 1.2
    assert [e["virtual_time"] for e in ev if e["kind"] == "commit"][:2] == pytest.approx([1.0, 1.2])
    assert sorted({e["virtual_time"] for e in arrivals if e["version"] == 0}) == pytest.approx([0.2, 1.0])
