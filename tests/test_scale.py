"""Scale features: per-client rows for participants only, a fixed evaluation sample, and
no per-round work proportional to the number of registered clients."""

from __future__ import annotations

import json

import numpy as np
from conftest import LINREG, merge, read_metrics, run_raw

BIG = merge(LINREG, data={"num_clients": 3000, "test_fraction": 0.25,
                          "dataset": {"name": "linear_regression", "dim": 3, "samples_per_client": 8}},
            participation={"name": "uniform", "k": 10}, engine={"rounds": 4}, metrics={"eval_every": 2})


def _clients(out) -> list[dict]:
    return [json.loads(line) for line in (out / "clients.jsonl").read_text().splitlines()]


def test_client_rows_modes(tmp_path):
    run_raw(merge(BIG, metrics={"client_metrics": "participants"}), tmp_path / "p")
    rows = _clients(tmp_path / "p")
    by_round = {r: [x for x in rows if x["round"] == r] for r in (0, 2, 4)}
    assert by_round[0] == []  # nobody has taken part before round 1
    assert len(by_round[2]) <= 20 and len(by_round[4]) <= 40 and by_round[4]
    assert all(x["participations"] > 0 for x in rows)
    run_raw(merge(BIG, metrics={"client_metrics": True}), tmp_path / "all")
    assert len(_clients(tmp_path / "all")) == 3 * 3000  # true = every client at every evaluation
    run_raw(merge(BIG, metrics={"client_metrics": "none"}), tmp_path / "none")
    assert _clients(tmp_path / "none") == []


def test_client_sample_limits_per_client_evaluation(tmp_path):
    run_raw(merge(BIG, metrics={"client_metrics": "all", "client_sample": 50}), tmp_path / "s")
    rows = _clients(tmp_path / "s")
    ids = {x["client"] for x in rows}
    assert len(ids) == 50 and len(rows) == 150  # the same 50 clients at each of 3 evaluations
    run_raw(merge(BIG, metrics={"client_metrics": "all", "client_sample": 50}), tmp_path / "s2")
    assert rows == _clients(tmp_path / "s2")  # a fixed, seeded sample
    # the sample's per-client loss equals the full evaluation's for those clients
    run_raw(merge(BIG, metrics={"client_metrics": "all"}), tmp_path / "full")
    full = {(x["client"], x["round"]): x["loss"] for x in _clients(tmp_path / "full")}
    for x in rows:
        assert np.isclose(x["loss"], full[(x["client"], x["round"])], rtol=1e-6)
    assert read_metrics(tmp_path / "s")[-1]["client_loss_mean"] > 0


def test_participation_sampling_is_vectorised():
    """uniform-k sampling and the mask cost O(k) Python work per round at any N."""
    from fedsim.world.participation import Context, UniformSample

    ctx = Context(1_000_000, np.random.default_rng(0), np.random.default_rng(1), lambda: None)
    proc = UniformSample(k=100).process(ctx)
    mask = proc.online(0, 0.0)
    assert mask.shape == (1_000_000,) and mask.sum() == 100


def test_float16_client_state_store_halves_memory_and_tracks_float32(tmp_path):
    from conftest import TINY

    from fedsim.engine.client_state import ClientStates

    store = ClientStates("float16")
    store[3] = np.array([1.0, -2.5, 1e-3], dtype=np.float32)
    store[4] = np.array([1e6], dtype=np.float32)  # beyond float16's range: kept in float32
    assert store.get(3).dtype == np.float32 and np.allclose(store.get(3), [1.0, -2.5, 1e-3], rtol=5e-4)
    assert store.get(4).tolist() == [1e6] and store.nbytes() == 3 * 2 + 4
    assert store.get(99) is None and len(store) == 2
    raw = merge(TINY, strategy={"name": "scaffold"}, engine={"rounds": 6})
    run_raw(raw, tmp_path / "f32")
    run_raw(merge(raw, engine={"client_state": "float16"}), tmp_path / "f16")
    a, b = read_metrics(tmp_path / "f32")[-1], read_metrics(tmp_path / "f16")[-1]
    assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 0.02 and abs(a["test_loss"] - b["test_loss"]) < 0.02


def test_scale_scenario_loads():
    from pathlib import Path

    from fedsim.scenario.loading import load

    sc = load(Path(__file__).resolve().parents[1] / "scenarios" / "scale_100k.yaml")
    assert sc.data.num_clients == 100_000 and sc.participation.k == 100
    assert sc.metrics.client_metrics == "participants" and sc.metrics.client_sample == 1000
