"""Hand-computed unit tests for the async strategies (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.strategy.maths import staleness_weight
from fedsim.types import ArrivalInfo, ClientUpdate, Oracle, RoundInfo
from strategies.async_fedavg import AsyncFedAvg
from strategies.fedavg import FedAvg
from strategies.fedbuff import FedBuff
from strategies.fedfix import FedFix

X0 = np.zeros(2, dtype=np.float32)


def up(client, delta, n=10, base=0):
    return ClientUpdate(client, np.asarray(delta, dtype=np.float32), n, base)


def info(version=0, staleness=0, n=4, base=None, t=0.0):
    return ArrivalInfo(version, t, n, staleness, base_params=base)


def feed(strategy, arrivals, params=X0, n=4, oracle=None):
    """Feed (update, staleness) pairs; returns the params after each commit and the final state."""
    state = strategy.init(params, n, oracle=oracle) if oracle is not None else strategy.init(params, n)
    commits = []
    for u, s in arrivals:
        state, new = strategy.receive(state, params, u, info(len(commits), s, n))
        if new is not None:
            params = new
            commits.append(new)
    return commits, state


# --- staleness weights (FedBuff, Nguyen et al. AISTATS 2022; FLSim async_staleness_weights.py) ------

def test_staleness_weights_t8():
    assert staleness_weight(0, "polynomial", 0.5, avg_staleness=0.0) == 1.0  # s(0) = 1 when τ̄ = 0
    assert staleness_weight(3, "polynomial", 0.5) == pytest.approx(0.5)  # 1/√(1+3)
    assert staleness_weight(3, "polynomial", 0.5, avg_staleness=1.0) == pytest.approx(np.sqrt(2 / 4))  # √((1+τ̄)/(1+τ))
    assert staleness_weight(1, "polynomial", 0.5, avg_staleness=1.0) == 1.0  # s(τ̄) = 1
    assert staleness_weight(2, "hinge", 0.5, cutoff=2) == 1.0
    assert staleness_weight(4, "hinge", 0.5, cutoff=2) == pytest.approx(0.5)  # 1/(1 + 0.5·2)
    assert staleness_weight(3, "threshold", cutoff=2, stale_value=0.3) == 0.3
    assert staleness_weight(7, "constant") == 1.0


# --- FedBuff ---------------------------------------------------------------------------------------

def test_fedbuff_buffer_by_hand():
    # K = 2, polynomial a = 0.5: s(0) = 1, s(3) = 1/2.  B = [1, 2] + ½[3, −1] = [2.5, 1.5]
    # mean: B/2 = [1.25, 0.75]; η = 2 → x = [2.5, 1.5].  sum: x = 2·B = [5, 3].
    arrivals = [(up(0, [1, 2]), 0), (up(1, [3, -1]), 3)]
    commits, state = feed(FedBuff(buffer_size=2, server_lr=2.0, staleness="polynomial"), arrivals)
    assert len(commits) == 1 and commits[0].tolist() == [2.5, 1.5]
    assert state.count == 0 and state.steps == 1 and state.buffer.tolist() == [0.0, 0.0]
    commits, _ = feed(FedBuff(buffer_size=2, server_lr=2.0, staleness="polynomial", buffer_reduction="sum"), arrivals)
    assert commits[0].tolist() == [5.0, 3.0]


def test_fedbuff_examples_weighting_mean_is_weighted_average():
    # e = n: (10·[1,0] + 30·[0,1]) / 40 = [0.25, 0.75]
    arrivals = [(up(0, [1, 0], n=10), 0), (up(1, [0, 1], n=30), 0)]
    commits, _ = feed(FedBuff(buffer_size=2, weighting="examples"), arrivals)
    assert commits[0].tolist() == [0.25, 0.75]


def test_fedbuff_max_staleness_and_one_per_client_discard():
    s = FedBuff(buffer_size=2, max_staleness=2)
    commits, state = feed(s, [(up(0, [1, 0]), 3), (up(1, [2, 0]), 2), (up(2, [4, 0]), 0)])
    assert commits[0].tolist() == [3.0, 0.0] and state.discarded == 1  # (2 + 4)/2; the τ=3 update did not count
    s = FedBuff(buffer_size=2, one_per_client=True)
    commits, state = feed(s, [(up(0, [1, 0]), 0), (up(0, [5, 0]), 0), (up(1, [3, 0]), 0)])
    assert commits[0].tolist() == [2.0, 0.0] and state.discarded == 1
    with pytest.raises(ValueError, match="never fill"):
        FedBuff(buffer_size=5, one_per_client=True).init(X0, 4)


def test_fedbuff_server_momentum():
    # K = 1, μ = 0.5, η = 1, Δ = 1 twice: m1 = 1 → x = 1;  m2 = 0.5 + 1 = 1.5 → x = 2.5
    commits, _ = feed(FedBuff(buffer_size=1, server_momentum=0.5), [(up(0, [1, 0]), 0), (up(1, [1, 0]), 0)])
    assert [c.tolist() for c in commits] == [[1.0, 0.0], [2.5, 0.0]]


def test_fedbuff_fraboni_weights_running_frequencies():
    # N = 4, K = 2, sum. Step 0: f̂ = 1 for both → d = P = 1/4: x = ¼([4,0] + [0,4]) = [1, 1].
    # Step 1: client 0 again: f̂ = (1+1)/(1+1) = 1 → d = ¼; client 2 (new): f̂ = 1/2 → d = ½.
    # x = [1,1] + ¼[4,0] + ½[0,4] = [2, 3].
    s = FedBuff(buffer_size=2, buffer_reduction="sum", weighting="fraboni")
    commits, state = feed(s, [(up(0, [4, 0]), 0), (up(1, [0, 4]), 0), (up(0, [4, 0]), 0), (up(2, [0, 4]), 0)])
    assert [c.tolist() for c in commits] == [[1.0, 1.0], [2.0, 3.0]]
    assert state.contributions.tolist() == [2, 1, 1, 0]


def test_fedbuff_fraboni_with_mean_is_refused_at_validation():
    # Fraboni et al. (JMLR 2023): θ ← θ + η Σ d_i Δ_i, no division. With `mean` the server step was
    # Σ d_i Δ_i / Σ d_i: for K = 1 exactly Δ, i.e. equal weights. Refused in one line naming the key.
    from fedsim.errors import ConfigError
    from fedsim.scenario.fields import build_plugin

    with pytest.raises(ConfigError, match=r"strategy\.buffer_reduction: weighting 'fraboni' needs buffer_reduction"):
        build_plugin("strategy", {"name": "fedbuff", "weighting": "fraboni"}, "strategy")
    with pytest.raises(ConfigError, match="buffer_reduction"):
        FedBuff(weighting="fraboni").init(X0, 4)
    assert build_plugin("strategy", {"name": "fedbuff", "weighting": "fraboni", "buffer_reduction": "sum"},
                        "strategy").weighting == "fraboni"


def test_fedbuff_k1_equals_fedasync_delta():
    # FLSim's FedBuff tests (1): K = 1, no momentum ≡ FedAsync with the delta rule, scaled by η·s(τ).
    rng = np.random.default_rng(1)
    arrivals = [(up(int(rng.integers(4)), rng.normal(size=2)), int(rng.integers(5))) for _ in range(20)]
    a, _ = feed(FedBuff(buffer_size=1, server_lr=0.7, staleness="polynomial"), arrivals)
    b, _ = feed(AsyncFedAvg(alpha=0.7, staleness="polynomial"), arrivals)
    assert len(a) == len(b) == 20
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_fedbuff_k_equals_n_is_one_fedavg_round():
    # FLSim's FedBuff tests (2, 3): all N clients start from the same model, no staleness: sum with η/K, or mean
    # with η, equals one round of sync FedAvg (uniform weights, server lr η).
    rng = np.random.default_rng(2)
    x = rng.normal(size=3).astype(np.float32)
    ups = [ClientUpdate(k, rng.normal(size=3).astype(np.float32), 10, 0) for k in range(4)]
    _, ref = FedAvg(server_lr=0.8, weighting="uniform").aggregate(None, x, ups, RoundInfo(0, 4, (0, 1, 2, 3), 0.0))
    for strat in (FedBuff(buffer_size=4, server_lr=0.8 / 4, buffer_reduction="sum"),
                  FedBuff(buffer_size=4, server_lr=0.8, buffer_reduction="mean")):
        commits, _ = feed(strat, [(u, 0) for u in ups], params=x)
        np.testing.assert_allclose(commits[0], ref, rtol=1e-6, atol=1e-7)


# --- FedFix ----------------------------------------------------------------------------------------

def oracle(tau, n=None):
    tau = np.asarray(tau, dtype=np.float64)
    return Oracle(None, tau, np.full(len(tau), 10) if n is None else np.asarray(n))


def test_fedfix_weights_and_tick_by_hand():
    # τ = (1.0, 0.3, 0.6), Δt = 0.5: m = ⌈τ/Δt⌉ = (2, 1, 2) — 1.0/0.5 is exactly 2, not 3; P = 1/3,
    # d = (2/3, 1/3, 2/3). Clients 0 and 1 send Δ = [3, 0]: x = 0 + ⅔·3 + ⅓·3 = 3.
    s = FedFix(commit_interval=0.5)
    assert s.uses_oracle
    st = s.init(X0, 3, oracle=oracle([1.0, 0.3, 0.6]))
    np.testing.assert_allclose(st.weights, [2 / 3, 1 / 3, 2 / 3])
    st, none = s.receive(st, X0, up(0, [3, 0]), info(0, 0, 3))
    assert none is None
    st, _ = s.receive(st, X0, up(1, [3, 0]), info(0, 0, 3))
    st, x1 = s.tick(st, X0, info(0, 0, 3))
    np.testing.assert_allclose(x1, [3.0, 0.0])
    st, x2 = s.tick(st, x1, info(1, 0, 3))  # empty tick: a no-op step that still commits (as in Fraboni et al.'s code)
    assert x2 is not None and x2.tolist() == x1.tolist()


def test_fedfix_identical_and_examples_importance():
    s = FedFix(commit_interval=0.5, weighting="identical")
    assert not s.uses_oracle
    np.testing.assert_allclose(s.init(X0, 4).weights, [0.25] * 4)
    s = FedFix(commit_interval=1.0, importance="examples")
    st = s.init(X0, 2, oracle=oracle([2.5, 1.0], n=[30, 10]))  # m = (3, 1), P = (0.75, 0.25)
    np.testing.assert_allclose(st.weights, [2.25, 0.25])
    with pytest.raises(ValueError, match="oracle"):
        FedFix().init(X0, 3)


# --- asynchronous FedAvg ---------------------------------------------------------------------------

def test_async_fedavg_delta_and_mix_by_hand():
    # delta: α = 0.5, s(3) = 1/√4 = ½ → α_t = ¼; x = [1, 1] + ¼[2, 0] = [1.5, 1]
    x = np.array([1.0, 1.0], dtype=np.float32)
    s = AsyncFedAvg(alpha=0.5, staleness="polynomial")
    _, new = s.receive(s.init(x, 2), x, up(0, [2, 0]), info(3, 3, 2))
    assert new.tolist() == [1.5, 1.0]
    # mix (FedAsync): start model [0, 0], local = [2, 0]; α = 0.5, hinge a = 0.5 b = 2, τ = 4: s = ½
    # → α_t = ¼; x = ¾[1, 1] + ¼[2, 0] = [1.25, 0.75]
    s = AsyncFedAvg(alpha=0.5, rule="mix", staleness="hinge", staleness_cutoff=2)
    _, new = s.receive(s.init(x, 2), x, up(0, [2, 0]), info(4, 4, 2, base=np.zeros(2, dtype=np.float32)))
    assert new.tolist() == [1.25, 0.75]


def test_async_fedavg_fraboni_weight():
    # d_i = P_i τ_i Σ 1/τ_j, τ = (1, 0.5), P = ½: Σ 1/τ = 3 → d = (1.5, 0.75)
    s = AsyncFedAvg(weighting="weight")
    assert s.uses_oracle
    np.testing.assert_allclose(s.init(X0, 2, oracle=oracle([1.0, 0.5])).weights, [1.5, 0.75])
    with pytest.raises(ValueError, match="oracle"):
        s.init(X0, 2)


@pytest.mark.parametrize("strategy", [FedBuff(buffer_size=2, server_momentum=0.5),
                                      FedBuff(weighting="fraboni", buffer_size=1, buffer_reduction="sum"),
                                      FedFix(weighting="identical"), AsyncFedAvg(rule="mix")])
def test_no_input_mutation(strategy):
    x = np.array([1.0, -1.0], dtype=np.float32)
    st = strategy.init(x, 4)
    u = up(1, [0.5, 0.5])
    snap_x, snap_d = x.copy(), u.delta.copy()
    for _ in range(3):
        before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(st).items()}
        st2, new = strategy.receive(st, x, u, info(0, 1, 4, base=x))
        for k, v in vars(st).items():
            assert np.array_equal(v, before[k]) if isinstance(v, np.ndarray) else v == before[k]
        st = st2
        if callable(getattr(strategy, "tick", None)):
            st, new = strategy.tick(st, x, info())
    assert np.array_equal(x, snap_x) and np.array_equal(u.delta, snap_d)


@pytest.mark.parametrize("m", [10, 20, 50])
@pytest.mark.parametrize("dt", [0.2, 0.5, 0.8])
def test_fedfix_weights_equal_fraboni_arithmetic_exactly(m, dt):
    # Fraboni et al. (JMLR 2023), official code: tau_i = [1 - i * P/100 / (n - 1)] for F-80 and
    # m_i = np.ceil(tau_i / delta_t), d_i = m_i * P_i with P_i = 1/n. Exact equality: with Δt = 0.2 and
    # M = 20, the fastest client has τ = 0.20000000000000007, so m = 2 there (a slack in the ceil gave 1,
    # halving its weight relative to the paper).
    tau = np.array([1 - i * 80 / 100 / (m - 1) for i in range(m)])
    from fedsim.world.system import LinearSpread
    assert LinearSpread(spread=80).draw(m, np.random.default_rng(0)).tolist() == tau.tolist()
    st = FedFix(commit_interval=dt).init(X0, m, oracle=oracle(tau))
    paper = np.ceil(tau / dt) * np.full(m, 1.0 / m)
    assert st.weights.tolist() == paper.tolist()


def test_staleness_flsim_convention_divides_every_kind_at_avg_staleness():
    # FLSim's StalenessWeight.weight: r(τ)/r(τ̄) for every kind, τ̄ = avg_staleness (default 1).
    flsim = dict(convention="flsim")
    assert staleness_weight(3, "polynomial", 0.5, **flsim) == pytest.approx((1 / 2) / (1 / np.sqrt(2)))  # √(2/4)
    assert staleness_weight(1, "polynomial", 0.5, **flsim) == 1.0
    assert staleness_weight(3, "polynomial", 0.5, avg_staleness=0.0, **flsim) == pytest.approx(0.5)
    # threshold b = 0, value 0.4: τ̄ = 1 > b, so r(τ̄) = 0.4 and s(0) = 1/0.4, s(5) = 1
    assert staleness_weight(0, "threshold", cutoff=0, stale_value=0.4, **flsim) == pytest.approx(2.5)
    assert staleness_weight(5, "threshold", cutoff=0, stale_value=0.4, **flsim) == 1.0
    assert staleness_weight(5, "threshold", cutoff=2, stale_value=0.4, **flsim) == pytest.approx(0.4)  # τ̄ ≤ b
    # the default (fedsim) convention is unchanged: τ̄ = 0, threshold unnormalised
    assert staleness_weight(3, "polynomial", 0.5) == 0.5
    assert staleness_weight(0, "threshold", cutoff=0, stale_value=0.4) == 1.0


def test_fedbuff_staleness_convention_validation_and_step():
    from fedsim.errors import ConfigError
    from fedsim.scenario.fields import build_plugin

    # fedsim convention: threshold ignores avg_staleness, so setting it is refused (it was silently ignored)
    with pytest.raises(ConfigError, match=r"strategy\.avg_staleness: staleness 'threshold' is not normalised"):
        build_plugin("strategy", {"name": "fedbuff", "staleness": "threshold", "avg_staleness": 2}, "strategy")
    with pytest.raises(ConfigError, match=r"strategy\.stale_value: is 0 at avg_staleness"):
        build_plugin("strategy", {"name": "fedbuff", "staleness": "threshold", "staleness_convention": "flsim"},
                     "strategy")
    # K = 1, sum, η = 1, polynomial a = ½, FLSim's τ̄ = 1: Δ = [2, 0] at τ = 3 → x = √(2/4)·2 = √2
    s = FedBuff(buffer_size=1, buffer_reduction="sum", staleness="polynomial", staleness_convention="flsim")
    (x,), _ = feed(s, [(up(0, [2.0, 0.0]), 3)])
    assert x[0] == pytest.approx(np.sqrt(2.0), rel=1e-6)
    (x,), _ = feed(FedBuff(buffer_size=1, buffer_reduction="sum", staleness="polynomial"), [(up(0, [2.0, 0.0]), 3)])
    assert x[0] == pytest.approx(1.0)  # the default: 1/√(1+3)·2
