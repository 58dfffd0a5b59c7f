"""FedAU (Wang & Ji, ICLR 2024, Algs. 1–2): the interval estimator, K = 1 ≡ average_all,
and its engine-level bias check on linear regression."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LINREG, TINY, merge, read_metrics, run_raw

from fedsim.types import ClientUpdate, RoundInfo
from fedsim.world.participation import Context, Cyclic, Markov
from strategies.average_all import AverageAll
from strategies.fedau import FedAU, interval_weights


def upd(client: int, delta, n: int = 10) -> ClientUpdate:
    return ClientUpdate(client, np.asarray(delta, dtype=np.float32), n, 0)


def info(r: int, n: int) -> RoundInfo:
    return RoundInfo(r, n, (), float(r))


def test_hand_computed_rounds():
    # N = 3, η = 1, K = ∞.
    # r0: clients 0, 2; ω = (1, 1, 1) (no records): x1 = 0 + (1/3)((1,0) + (0,3)) = (1/3, 1)
    #     records: Σ = (1, 0, 1), M = (1, 0, 1), c = (0, 1, 0)
    # r1: client 1, ω_1 = 1: x2 = x1 + (1/3)(3,3) = (4/3, 2); Σ_1 += c_1 + 1 = 2; c = (1, 0, 1)
    # r2: empty: x unchanged; c = (2, 1, 2)
    # r3: clients 0, 1 with ω_0 = 1/1, ω_1 = 2/1 (read BEFORE recording this round's interval):
    #     x4 = x2 + (1/3)(3·1, 3·2) = (7/3, 4); then Σ_0 = 1 + 3 = 4, M_0 = 2 → ω_0 = 2;
    #     Σ_1 = 2 + 2 = 4, M_1 = 2 → ω_1 = 2; client 2: c = 3, ω_2 = 1/1.
    s = FedAU()
    x = np.zeros(2, np.float32)
    st = s.init(x, 3)
    st, x = s.aggregate(st, x, [upd(2, [0, 3]), upd(0, [1, 0])], info(0, 3))
    np.testing.assert_allclose(x, [1 / 3, 1], rtol=1e-6)
    st, x = s.aggregate(st, x, [upd(1, [3, 3])], info(1, 3))
    np.testing.assert_allclose(x, [4 / 3, 2], rtol=1e-6)
    st, x2 = s.aggregate(st, x, [], info(2, 3))
    assert x2 is x and list(st.count) == [2, 1, 2]
    st, x = s.aggregate(st, x, [upd(0, [3, 0]), upd(1, [0, 3])], info(3, 3))
    np.testing.assert_allclose(x, [7 / 3, 4], rtol=1e-6)
    assert list(st.total) == [4, 4, 1] and list(st.records) == [2, 2, 1] and list(st.count) == [0, 0, 3]
    report = s.client_report(st)
    assert [report[k]["fedau_weight"] for k in range(3)] == [2.0, 2.0, 1.0]
    assert report[0]["fedau_intervals"] == 2


def test_cutoff_records_k_and_server_lr_scales():
    # K = 2, one client: r0 participates (records 1); absent r1, r2 → c hits 2 at r2: records 2;
    # absent r3 (c = 1); r4 participates: records c + 1 = 2.  ω = (1 + 2 + 2)/3 = 5/3.
    s = FedAU(cutoff=2, server_lr=0.5)
    x = np.zeros(1, np.float32)
    st = s.init(x, 1)
    for r, part in enumerate([1, 0, 0, 0, 1]):
        st, x = s.aggregate(st, x, [upd(0, [1.0])] if part else [], info(r, 1))
    assert list(st.records) == [3] and st.total[0] == 5 and st.count[0] == 0
    assert s.client_report(st)[0]["fedau_weight"] == pytest.approx(5 / 3)
    # model moved twice, each by η·ω/N·Δ with ω = 1 then ω = (1+2)/2 = 1.5: 0.5·1 + 0.5·1.5
    assert x[0] == pytest.approx(1.25)


def _drive(strategy, masks: np.ndarray, x0: np.ndarray, deltas=None):
    """Run `strategy` over participation masks (T, N); Δ_n = -(x - c_n) for a fixed c."""
    n = masks.shape[1]
    c = np.linspace(-1, 1, n).astype(np.float32)
    st, x = strategy.init(x0, n), x0
    for t, mask in enumerate(masks):
        ups = [upd(int(k), 0.3 * (c[k] - x)) for k in np.flatnonzero(mask)]
        st, x = strategy.aggregate(st, x, ups, info(t, n))
    return st, x


# Client counts per probability are chosen so that every group records ~10^4 intervals
# (relative Monte-Carlo error < 1 %) while the whole test stays under a couple of seconds.
GROUPS = {0.1: 200, 0.3: 40, 0.6: 10, 0.9: 5}


@pytest.mark.parametrize("cutoff", [100_000, 5])
def test_T3_bernoulli_weight_estimate(cutoff):
    # Wang & Ji (ICLR 2024), Alg. 2 with cutoff K: recorded intervals are min(Geometric(p), K), so
    # ω → E[min(G, K)] = Σ_{j=1..K} (1-p)^{j-1} = (1 - (1-p)^K)/p.
    p = np.concatenate([np.full(k, q) for q, k in GROUPS.items()])
    masks = np.random.default_rng(0).random((1500, len(p))) < p
    st, _ = _drive(FedAU(cutoff=cutoff), masks, np.zeros(1, np.float32))
    w = interval_weights(st)
    for q in GROUPS:
        expected = (1 - (1 - q) ** cutoff) / q
        assert w[p == q].mean() == pytest.approx(expected, rel=0.02)


def test_T3_markov_and_cyclic_weight_is_inverse_long_run_frequency():
    # K = ∞: the mean interval is 1/(long-run frequency) for any stationary ergodic process (Kac):
    # 1/p for Markov, (A + B)/A for cyclic (the first, truncated interval biases it by O(1/cycles)).
    probs = tuple([0.2] * 100 + [0.5] * 20)
    for plugin, steps, tol in [(Markov(probs=probs, a=0.3), 1500, 0.03), (Cyclic(probs=probs, period=10), 1000, 0.02)]:
        ctx = Context(len(probs), np.random.default_rng(1), np.random.default_rng(2), lambda: None)
        proc = plugin.process(ctx)
        masks = np.array([proc.online(t, float(t)) for t in range(steps)])
        st, _ = _drive(FedAU(), masks, np.zeros(1, np.float32))
        w = interval_weights(st)
        for q in (0.2, 0.5):
            sel = np.asarray(probs) == q
            assert w[sel].mean() == pytest.approx(np.mean(1 / proc.probs[sel]), rel=tol)


def test_T5_cutoff_one_is_average_all():
    # K = 1 records an interval of 1 every round, so ω ≡ 1 and the rule is
    # (1/N) Σ_S Δ_n — the same float operations as average_all: identical trajectories.
    masks = np.random.default_rng(3).random((300, 12)) < np.linspace(0.05, 0.9, 12)
    x0 = np.array([0.5, -0.25], np.float32)
    _, xa = _drive(FedAU(cutoff=1, server_lr=1.5), masks, x0)
    _, xb = _drive(AverageAll(server_lr=1.5), masks, x0)
    assert np.array_equal(xa, xb)
    _, xc = _drive(FedAU(server_lr=1.5), masks, x0)
    assert not np.array_equal(xa, xc)


# -- engine level: the bias of fixed weights under heterogeneous participation -----------------

BIASED = merge(LINREG, data={"num_clients": 10, "dataset": {"dim": 2}},
               client={"local_steps": 1, "lr": 0.25, "lr_decay": 0.985},
               engine={"rounds": 250}, metrics={"eval_every": 250})


def correlated_probs(raw) -> tuple[list[float], np.ndarray]:
    """p_n = 0.9 for clients whose local optimum has a first coordinate above the median, else
    0.1, so that participation-weighted averaging is pulled far from the true optimum. Also
    returns the closed-form minimiser of Σ p_n F_n (the biased point)."""
    from fedsim.runner import build_data
    from fedsim.scenario.loading import from_mapping

    data = build_data(from_mapping(raw))
    a, b, local = 0.0, 0.0, []
    for k in range(data.num_clients):
        sl = data.train_slice(k)
        xa = np.c_[data.x_train[sl], np.ones(sl.stop - sl.start)].astype(np.float64)
        local.append(np.linalg.lstsq(xa, data.y_train[sl], rcond=None)[0])
    local = np.array(local)
    p = np.where(local[:, 0] > np.median(local[:, 0]), 0.9, 0.1)
    for k in range(data.num_clients):  # Σ p_k/n_k A_k w = Σ p_k/n_k b_k
        sl = data.train_slice(k)
        xa = np.c_[data.x_train[sl], np.ones(sl.stop - sl.start)].astype(np.float64)
        a = a + p[k] / len(xa) * xa.T @ xa
        b = b + p[k] / len(xa) * xa.T @ data.y_train[sl]
    return p.tolist(), np.linalg.solve(a, b)


def test_fedau_removes_participation_bias(tmp_path):
    p, biased_point = correlated_probs(BIASED)
    dist, params = {}, {}
    for name in ["average_participating", "fedau", "known_probability"]:
        raw = merge(BIASED, participation={"name": "bernoulli", "probs": p}, strategy={"name": name})
        res = run_raw(raw, tmp_path / name)
        dist[name] = read_metrics(tmp_path / name)[-1]["optimum_distance"]
        params[name] = res.params
    # Numbers (seed 0): average_participating 0.67, fedau 0.073, known_probability 0.030.
    assert dist["fedau"] * 5 <= dist["average_participating"]
    assert abs(dist["fedau"] - dist["known_probability"]) <= 0.1 * dist["average_participating"]
    # average_participating sits near the participation-weighted optimum argmin Σ p_n F_n
    near = np.linalg.norm(params["average_participating"] - biased_point)
    assert near < 0.3 * dist["average_participating"]


def test_weights_logged_in_clients_jsonl_match_the_participation_record(tmp_path):
    # With K = ∞ every participation records one interval and the intervals of a client telescope
    # to (round of its last participation + 1), so ω_n = (t_last + 1)/M_n with M_n = participations.
    import json

    raw = merge(TINY, participation={"name": "bernoulli", "probs": [0.2, 0.4, 0.5, 0.6, 0.8, 0.9]},
                strategy={"name": "fedau"}, engine={"rounds": 12}, metrics={"eval_every": 12})
    run_raw(raw, tmp_path)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    last = {}
    for e in events:
        if e["kind"] == "arrive":
            last[e["client"]] = e["version"]  # sync: version at arrival = round index
    rows = [json.loads(line) for line in (tmp_path / "clients.jsonl").read_text().splitlines()]
    final = [r for r in rows if r["round"] == 12]
    assert len(final) == 6
    for r in final:
        assert r["fedau_intervals"] == r["participations"]
        want = (last[r["client"]] + 1) / r["participations"] if r["participations"] else 1.0
        assert r["fedau_weight"] == pytest.approx(want)
