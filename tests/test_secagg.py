"""Simulated secure aggregation (fedsim.pipeline.secagg): exact arithmetic, masking, thresholds, cost."""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import LINREG, TINY, merge, read_metrics, run_raw

from fedsim import seeding
from fedsim.errors import ContractError, ScenarioError
from fedsim.pipeline import secagg as sa
from fedsim.scenario.loading import from_mapping
from fedsim.strategy.contracts import check_strategy
from fedsim.types import ClientUpdate

ROOT = 7


def _inputs(cfg, clients, d, weights, rng_seed=0, spread=1.0):
    """Each client's float delta and its encoded x_u (with the stage's own rounding streams)."""
    rng = np.random.default_rng(rng_seed)
    s = sa.scale(cfg, len(clients), max(weights.values()))
    deltas = {u: rng.uniform(-spread, spread, d) for u in clients}
    xs = {u: sa.encode(deltas[u], weights[u], s, cfg, seeding.rng(ROOT, "secagg", 0, 2, u)) for u in clients}
    return s, deltas, xs


def _masked(cfg, keys, xs, alive):
    return {u: sa.masked_input(keys, u, xs[u], cfg.bits) for u in alive}


@pytest.mark.parametrize("cfg", [sa.SecAgg(threshold=0.5, bits=32, clip_range=2.0),
                                 sa.SecAggPlus(threshold=0.5, bits=40, clip_range=2.0, neighbours=4),
                                 sa.SecAgg(threshold=0.5, bits=64, clip_range=2.0)])
def test_unmasked_sum_is_the_exact_fixed_point_sum_and_decodes_within_the_bound(cfg):
    clients, d = list(range(9)), 300
    weights = {u: 3 + u for u in clients}
    s, deltas, xs = _inputs(cfg, clients, d, weights)
    keys = sa.setup_keys(cfg, ROOT, 0, clients)
    alive = [0, 1, 2, 4, 5, 7, 8]  # 3 and 6 dropped after the key setup
    total, why = sa.unmask(keys, _masked(cfg, keys, xs, alive), cfg.bits)
    assert why is None
    plain = sum(xs[u] for u in alive) & sa._mask(cfg.bits)  # Σ x_u mod 2^b, without any mask
    assert np.array_equal(total, plain)  # exactly, as integers
    ints = sa.decode(total, cfg.bits)
    w = sum(weights[u] for u in alive)
    assert ints[0] == w  # the weight coordinate sums the weights
    mean = ints[1:] / (s * w)
    exact = sum(weights[u] * deltas[u] for u in alive) / w
    # stochastic rounding: |q/s − Δ| < 1/s per client (+ float64 rounding, which dominates at b = 64)
    assert np.max(np.abs(mean - exact)) <= 1 / s + 1e-15


def test_masked_vector_is_independent_of_its_input():
    cfg = sa.SecAgg(bits=16, clip_range=1.0)
    clients, d = [0, 1, 2, 3], 40_000
    keys = sa.setup_keys(cfg, ROOT, 3, clients)
    x = np.zeros(d + 1, dtype=np.uint64)
    x2 = np.arange(d + 1, dtype=np.uint64) % np.uint64(2**16)
    y, y2 = sa.masked_input(keys, 1, x, 16), sa.masked_input(keys, 1, x2, 16)
    # the mask does not depend on the input: the difference is exactly the input difference
    assert np.array_equal((y2 - y) & sa._mask(16), (x2 - x) & sa._mask(16))
    # and a masked vector is uniform on Z_{2^16}: chi-square of its top 4 bits over 16 bins
    for v in (y, y2):
        counts = np.bincount((v >> np.uint64(12)).astype(np.int64), minlength=16)
        expected = v.size / 16
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 50.0  # 15 degrees of freedom: P(χ² > 50) ≈ 1e-5 for a uniform vector
    # while the plain input x2 is far from uniform in its top bits (the test can fail)
    counts = np.bincount((x2 >> np.uint64(12)).astype(np.int64), minlength=16)
    assert float(((counts - x2.size / 16) ** 2 / (x2.size / 16)).sum()) > 50.0


def test_threshold_failure_complete_graph():
    cfg = sa.SecAgg(threshold=0.6)  # t = ⌈0.6·5⌉ = 3 of the 5 share holders
    clients = [0, 1, 2, 3, 4]
    _, _, xs = _inputs(cfg, clients, 10, {u: 1 for u in clients})
    keys = sa.setup_keys(cfg, ROOT, 0, clients)
    assert set(keys.t.values()) == {3}
    total, why = sa.unmask(keys, _masked(cfg, keys, xs, [0, 2, 4]), cfg.bits)
    assert why is None and np.array_equal(total, (xs[0] + xs[2] + xs[4]) & sa._mask(32))
    total, why = sa.unmask(keys, _masked(cfg, keys, xs, [1, 3]), cfg.bits)
    assert total is None and why == "self-mask seed 1 has 2 surviving share holders, fewer than the threshold t = 3"
    assert sa.threshold(sa.SecAgg(threshold=4), 10) == 4 and sa.threshold(sa.SecAgg(threshold=0.1), 10) == 2


def test_secagg_plus_graph_degree_and_neighbour_dropouts():
    cfg = sa.SecAggPlus(neighbours=4, threshold=0.6)  # holders N̄(u) = 5, t = 3
    clients = list(range(11))
    keys = sa.setup_keys(cfg, ROOT, 2, clients)
    nb = keys.neighbours
    assert all(len(nb[u]) == 4 and u not in nb[u] for u in clients)
    assert all(u in nb[v] for u in clients for v in nb[u])  # symmetric: pairs mask each other
    assert sa.SecAggPlus().degree(100) == 14 and sa.SecAggPlus().degree(5) == 4  # 2⌈log2 m⌉, at most m − 1
    assert sa.SecAggPlus(neighbours=5).degree(20) == 6  # rounded up to even
    _, _, xs = _inputs(cfg, clients, 25, {u: 1 for u in clients})
    # one neighbour of client 0 drops: its key is reconstructed from the survivors' shares
    v = min(nb[0])
    alive = [u for u in clients if u != v]
    total, why = sa.unmask(keys, _masked(cfg, keys, xs, alive), cfg.bits)
    assert why is None and np.array_equal(total, sum(xs[u] for u in alive) & sa._mask(32))
    # three of client 0's four neighbours drop: b_0 has 2 holders left (0 and one neighbour) < t
    gone = sorted(nb[0])[:3]
    alive = [u for u in clients if u not in gone]
    total, why = sa.unmask(keys, _masked(cfg, keys, xs, alive), cfg.bits)
    assert total is None and why.startswith("self-mask seed 0 has 2 surviving share holders")


def test_shamir_reconstructs_from_any_t_shares():
    rng = np.random.default_rng(0)
    shares = sa.shamir_split(123456789, [1, 2, 3, 4, 5], 3, rng)
    assert sa.shamir_combine({x: shares[x] for x in (1, 3, 5)}) == 123456789
    assert sa.shamir_combine({x: shares[x] for x in (2, 4, 5)}) == 123456789
    assert sa.shamir_combine({x: shares[x] for x in (2, 4)}) != 123456789  # below t: a different value


def _events(out: Path):
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def test_least_squares_same_model_up_to_the_fixed_point_error(tmp_path):
    raw = merge(LINREG, engine={"rounds": 1})
    cfg = {"name": "secagg", "clip_range": 8.0}
    plain = run_raw(raw, tmp_path / "plain").params
    secure = run_raw(merge(raw, secagg=cfg), tmp_path / "sa").params
    s = sa.scale(sa.SecAgg(clip_range=8.0), 10, 1000)  # 10 clients, max_weight 1000 (examples)
    diff = np.max(np.abs(secure.astype(np.float64) - plain))
    assert 0 < diff <= 1 / s + 1e-6  # 1/s ≈ 3.7e-5; + float32 rounding of the model
    long_plain = run_raw(merge(LINREG, engine={"rounds": 40}, metrics={"eval_every": 40}), tmp_path / "lp")
    long_sa = run_raw(merge(LINREG, engine={"rounds": 40}, metrics={"eval_every": 40}, secagg=cfg), tmp_path / "ls")
    assert np.max(np.abs(long_sa.params - long_plain.params)) < 1e-3
    assert abs(long_sa.final["optimum_distance"] - long_plain.final["optimum_distance"]) < 1e-3


def test_quickstart_same_model_up_to_the_fixed_point_error(tmp_path):
    raw = from_mapping_file("scenarios/quickstart.yaml")
    raw = merge(raw, engine={"rounds": 3}, metrics={"eval_every": 3, "client_metrics": False})
    plain = run_raw(raw, tmp_path / "plain")
    secure = run_raw(merge(raw, secagg={"name": "secagg_plus"}), tmp_path / "sa")
    assert np.max(np.abs(secure.params - plain.params)) < 1e-3
    assert abs(secure.final["test_accuracy"] - plain.final["test_accuracy"]) <= 0.01
    assert secure.final["virtual_time"] > plain.final["virtual_time"]  # the protocol costs time


def from_mapping_file(path):
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / path).read_text())


def test_extra_time_and_bytes_exact(tmp_path):
    raw = merge(TINY, engine={"rounds": 2},
                system={"compute": {"name": "constant", "time": 0.5}, "time_per": "job", "latency": 0.1,
                        "bandwidth_mbps": 1.0})
    plain = read_metrics(run_raw(raw, tmp_path / "plain").out)
    secure = read_metrics(run_raw(merge(raw, secagg={"name": "secagg"}), tmp_path / "sa").out)
    # m = 6 clients, complete graph k = 5, b = 32, d + 1 coordinates; bytes per client:
    #   AdvertiseKeys up 2·32 = 64, down 5·(2·32 + 4) = 340
    #   ShareKeys up = down = 5·(2·36 + 8 + 28) = 540
    #   masked input (d + 1)·4 − 4d = 4 more than the float32 vector
    #   Unmasking up (5 + 1)·36 = 216, down 4·6 = 24
    up = 6 * (64 + 540 + 4 + 216)  # 4944
    down = 6 * (340 + 540 + 24)  # 5424
    # seconds: each round trip 2·0.1 + bytes·8/1e6 for one client (all in parallel)
    extra = (0.2 + (64 + 340) * 8e-6) + (0.2 + 2 * 540 * 8e-6) + 4 * 8e-6 + (0.2 + (216 + 24) * 8e-6)
    assert extra == pytest.approx(0.613824, abs=1e-12)
    for r in (1, 2):
        assert secure[r]["bytes_up"] - plain[r]["bytes_up"] == r * up
        assert secure[r]["bytes_down"] - plain[r]["bytes_down"] == r * down
        assert secure[r]["virtual_time"] - plain[r]["virtual_time"] == pytest.approx(r * extra, abs=1e-9)


def test_threshold_failure_in_a_run_leaves_the_model_unchanged(tmp_path):
    raw = merge(LINREG, engine={"rounds": 12}, metrics={"eval_every": 1},
                system={"dropout_prob": 0.3}, secagg={"name": "secagg_plus", "neighbours": 2, "threshold": 0.6})
    with pytest.warns(RuntimeWarning, match="secure aggregation aborted"):
        res = run_raw(raw, tmp_path / "f")
    rows = read_metrics(res.out)
    warned = [e for e in _events(res.out) if e["kind"] == "warning" and "secure aggregation" in e["message"]]
    assert warned
    failed_rounds = {int(e["message"].split(":")[0].split()[1]) for e in warned}
    for r in failed_rounds:
        assert rows[r]["optimum_distance"] == rows[r - 1]["optimum_distance"]  # no update, model unchanged
        assert rows[r]["num_updates"] == rows[r - 1]["num_updates"]
    assert any(rows[r]["optimum_distance"] != rows[r - 1]["optimum_distance"]
               for r in range(1, 13) if r not in failed_rounds)


def test_a_single_client_cohort_is_never_revealed(tmp_path):
    raw = merge(LINREG, engine={"rounds": 2}, participation={"name": "uniform", "k": 1},
                secagg={"name": "secagg"})
    with pytest.warns(RuntimeWarning, match="a cohort of one client"):
        res = run_raw(raw, tmp_path / "one")
    rows = read_metrics(res.out)
    assert rows[-1]["optimum_distance"] == rows[0]["optimum_distance"] and rows[-1]["num_updates"] == 0


def test_same_seed_same_run_on_a_thread_pool_and_after_resume(tmp_path):
    import shutil

    from fedsim import cli
    from fedsim.engine import checkpoint

    raw = merge(TINY, engine={"rounds": 6}, system={"dropout_prob": 0.2}, secagg={"name": "secagg_plus"},
                checkpoint={"every": 3})
    a = run_raw(raw, tmp_path / "a")
    b = run_raw(merge(raw, executor={"name": "inline", "workers": 2}), tmp_path / "b")
    assert read_metrics(a.out) == read_metrics(b.out) and np.array_equal(a.params, b.params)
    assert _events(a.out) == _events(b.out)
    shutil.copytree(a.out, tmp_path / "again")  # as a crash after the round-3 checkpoint leaves it
    (tmp_path / "again" / "summary.json").unlink()
    assert checkpoint.load(tmp_path / "again")["next_round"] == 3
    assert cli.main(["run", "--resume", str(tmp_path / "again"), "--quiet"]) == 0
    assert read_metrics(tmp_path / "again") == read_metrics(a.out)
    assert _events(tmp_path / "again") == _events(a.out)


@pytest.mark.parametrize("changes, line", [
    ({"strategy": {"name": "fedau"}},
     "secagg: strategy fedau needs per-client updates (its aggregate is not a weighted sum the clients"),
    ({"strategy": {"name": "scaffold"}}, "secagg: strategy scaffold needs per-client updates"),
    ({"engine": {"mode": "async", "max_versions": 3}, "strategy": {"name": "fedbuff"}},
     "secagg: needs engine.mode: sync"),
    ({"robust": {"name": "median"}}, "robust.name: robust aggregation needs per-client updates"),
    ({"channel": {"uplink_noise_std": 0.1}}, "channel.uplink_noise_std: secagg uploads masked integers"),
    ({"faults": {"byzantine": {"fraction": 0.2}}}, "faults.byzantine.fraction: under secagg"),
    ({"secagg": {"name": "secagg", "threshold": 2.5}}, "secagg.threshold: a value above 1 is a count"),
])
def test_incompatible_scenarios_are_refused_at_load_time(changes, line):
    raw = merge(TINY, secagg={"name": "secagg"})
    raw = merge(raw, **changes)
    with pytest.raises((ScenarioError, ValueError)) as info:
        from_mapping(raw)
    assert line in str(info.value)
    assert "\n" not in str(info.value)


def test_secure_sum_strategies_are_the_fedavg_family():
    from fedsim import registry

    summable = sorted(n for n, c in registry.table("strategy").items() if getattr(c, "secure_sum", False))
    assert summable == ["average_participating", "fedadagrad", "fedadam", "fedavg", "fedprox", "fedyogi"]
    for name in summable:
        from_mapping(merge(TINY, strategy={"name": name}, secagg={"name": "secagg_plus"}))


def test_contract_refuses_a_bad_secure_sum_declaration():
    @dataclass(frozen=True, kw_only=True)
    class Models:
        """Sends models: cannot be summed as deltas."""

        modes: ClassVar[tuple[str, ...]] = ("sync",)
        sends: ClassVar[str] = "model"
        secure_sum: ClassVar[bool] = True

        def init(self, params, num_clients):
            return None

        def aggregate(self, state, params, updates, info):
            return state, params

        def client_update(self, task, trainer, state):
            raise NotImplementedError

    with pytest.raises(ContractError, match="secure_sum needs sends 'delta'.*secure_sum needs a weighting"):
        check_strategy(Models)


def test_pooled_update_feeds_fedavg_its_weighted_mean():
    from strategies.fedavg import FedAvg

    stage = sa.SecAggStage(sa.SecAgg(clip_range=1.0), ROOT, "examples", from_mapping(TINY).system)
    ups = [ClientUpdate(c, np.full(4, 0.1 * (c + 1), dtype=np.float32), 10 * (c + 1), 0) for c in range(3)]
    out = stage.round(0, [0, 1, 2, 5], ups, 4, 0)  # client 5 was dispatched but dropped out
    assert out.failure is None and len(out.cohort) == 1 and out.cohort[0].num_examples == 60
    # Σ n_i Δ_i / Σ n_i = (10·0.1 + 20·0.2 + 30·0.3)/60 = 14/60
    assert np.allclose(out.cohort[0].vector, 14 / 60, atol=1 / sa.scale(stage.cfg, 4, 1000))
    _, new = FedAvg().aggregate(None, np.zeros(4, np.float32), out.cohort, None)
    _, ref = FedAvg().aggregate(None, np.zeros(4, np.float32), ups, None)
    assert np.max(np.abs(new - ref)) <= 1 / sa.scale(stage.cfg, 4, 1000) + 1e-7
    assert math.isclose(float(ref[0]), 14 / 60, rel_tol=1e-6)


def test_none_is_bit_identical_and_rejected_updates_are_dropouts(tmp_path):
    raw = merge(TINY, engine={"rounds": 2}, faults={"nan_update_prob": 0.3})
    plain = run_raw(raw, tmp_path / "plain")
    none = run_raw(merge(raw, secagg={"name": "none"}), tmp_path / "none")
    assert read_metrics(plain.out) == read_metrics(none.out) and np.array_equal(plain.params, none.params)
    # NaN updates fail validation: under secagg those clients never send a masked input (dropouts
    # before MaskedInputCollection) and the sum of the others is what the plain run averages
    secure = run_raw(merge(raw, engine={"rounds": 1}, secagg={"name": "secagg", "clip_range": 8.0}), tmp_path / "sa")
    one = run_raw(merge(raw, engine={"rounds": 1}), tmp_path / "one")
    drops = [e for e in _events(secure.out) if e["kind"] == "drop"]
    assert drops and all(e["reason"] == "non-finite values in update" for e in drops)
    s = sa.scale(sa.SecAgg(clip_range=8.0), 6, 1000)
    assert np.max(np.abs(secure.params.astype(np.float64) - one.params)) <= 1 / s + 1e-6
