"""The FedAU paper's baselines (Wang & Ji, ICLR 2024; code IBM/fedau): hand-computed rounds and convergence on linear
regression under the same heterogeneous participation as test_fedau.py."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LINREG, merge, read_metrics, run_raw
from test_fedau import BIASED, correlated_probs, info, upd

from fedsim.errors import RunError
from fedsim.types import Oracle
from strategies.average_all import AverageAll
from strategies.average_participating import AverageParticipating
from strategies.fedvarp import FedVarp
from strategies.known_probability import KnownProbability
from strategies.mifa import Mifa

X0 = np.array([1.0, 1.0], np.float32)
# 5 clients, lr 0.5: the GD contraction (1 - 0.5 λ_min)^80 is far below the 1e-3 tolerance.
FAST_FULL = merge(LINREG, data={"num_clients": 5}, client={"lr": 0.5}, engine={"rounds": 80},
                  metrics={"eval_every": 80})
COHORT = [upd(3, [0, 4]), upd(1, [2, 0])]  # clients 1 and 3 of N = 4, out of order on purpose


def oracle(p) -> Oracle:
    return Oracle(None if p is None else np.asarray(p, float), np.ones(4), np.full(4, 10))


def test_average_participating_hand_computed():
    # mean_{S}Δ = ((2,0) + (0,4))/2 = (1, 2); η = 0.5: x = (1,1) + 0.5·(1,2) = (1.5, 2)
    s = AverageParticipating(server_lr=0.5)
    st, x = s.aggregate(s.init(X0, 4), X0, COHORT, info(0, 4))
    np.testing.assert_allclose(x, [1.5, 2.0])
    assert s.aggregate(st, x, [], info(1, 4))[1] is x  # empty round: no change


def test_average_all_hand_computed():
    # (1/N) Σ_S Δ = (2, 4)/4 = (0.5, 1); η = 0.5: x = (1.25, 1.5)
    s = AverageAll(server_lr=0.5)
    st, x = s.aggregate(s.init(X0, 4), X0, COHORT, info(0, 4))
    np.testing.assert_allclose(x, [1.25, 1.5])


def test_known_probability_hand_computed():
    # p = (0.5, 0.25, 1, 0.8) → 1/(N p) = (0.5, 1, 0.25, 0.3125);
    # step = 1·(2,0) + 0.3125·(0,4) = (2, 1.25); x = (3, 2.25)
    s = KnownProbability()
    st = s.init(X0, 4, oracle=oracle([0.5, 0.25, 1.0, 0.8]))
    st, x = s.aggregate(st, X0, COHORT, info(0, 4))
    np.testing.assert_allclose(x, [3.0, 2.25])
    assert s.client_report(st)[1]["known_weight"] == pytest.approx(4.0)


def test_known_probability_needs_fixed_probabilities(tmp_path):
    s = KnownProbability()
    with pytest.raises(ValueError, match="known_probability needs"):
        s.init(X0, 4, oracle=oracle(None))
    with pytest.raises(ValueError, match="client 2 has participation probability"):
        s.init(X0, 4, oracle=oracle([0.5, 0.5, 0.0, 0.5]))
    trace = tmp_path / "trace.csv"
    trace.write_text("client,start,end\n0,0,100\n")
    raw = merge(LINREG, participation={"name": "trace", "path": str(trace)},
                strategy={"name": "known_probability"}, engine={"rounds": 2})
    with pytest.raises(RunError, match="strategy: known_probability needs"):
        run_raw(raw, tmp_path / "out")


def test_mifa_hand_computed():
    # N = 3, η = 1, stored y start at 0:
    # r0: y_0 = (3,0): step = mean(y) = (1,0) → x = (1,0)
    # r1: y_1 = (0,6): step = (1,2) → x = (2,2)
    # r2: empty: the stored updates are applied again: x = (3,4)
    # r3: y_0 = (-3,0): step = (-1,2) → x = (2,6)
    s = Mifa()
    x = np.zeros(2, np.float32)
    st = s.init(x, 3)
    assert s.aggregate(st, x, [], info(0, 3))[1] is x  # nothing stored yet: no step
    for r, ups, want in [(0, [upd(0, [3, 0])], [1, 0]), (1, [upd(1, [0, 6])], [2, 2]),
                         (2, [], [3, 4]), (3, [upd(0, [-3, 0])], [2, 6])]:
        st, x = s.aggregate(st, x, ups, info(r, 3))
        np.testing.assert_allclose(x, want)
    assert st.latest.dtype == np.float32 and st.latest.shape == (3, 2)


def test_fedvarp_hand_computed():
    # N = 3, η = 1, y start at 0:
    # r0: client 0 Δ=(3,0): ȳ = 0, step = (3,0) → x = (3,0); y_0 = (3,0)
    # r1: Δ_0=(0,3), Δ_1=(3,3): ȳ = (1,0) (before replacement); mean(Δ−y) = ((-3,3)+(3,3))/2 = (0,3)
    #     step = (1,3) → x = (4,3); y = [(0,3), (3,3), 0]
    # r2: empty: unchanged (no ȳ term, as in IBM/fedau)
    # r3: client 2 Δ=(6,0): ȳ = (1,2); step = (6,0) + (1,2) = (7,2) → x = (11,5)
    s = FedVarp()
    x = np.zeros(2, np.float32)
    st = s.init(x, 3)
    for r, ups, want in [(0, [upd(0, [3, 0])], [3, 0]), (1, [upd(1, [3, 3]), upd(0, [0, 3])], [4, 3]),
                         (2, [], [4, 3]), (3, [upd(2, [6, 0])], [11, 5])]:
        st, x = s.aggregate(st, x, ups, info(r, 3))
        np.testing.assert_allclose(x, want)
    np.testing.assert_allclose(st.latest, [[0, 3], [3, 3], [6, 0]])


@pytest.mark.parametrize("name", ["average_participating", "average_all", "known_probability", "mifa",
                                  "fedvarp", "fedau"])
def test_full_participation_reaches_the_optimum(name, tmp_path):
    # Full participation, one full-batch GD step per round: every rule reduces to centralised GD
    # on (1/N) Σ F_n (equal client sizes), whose minimiser is the closed-form optimum.
    run_raw(merge(FAST_FULL, strategy={"name": name}), tmp_path)
    assert read_metrics(tmp_path)[-1]["optimum_distance"] < 1e-3


def test_bias_under_heterogeneous_participation(tmp_path):
    # Same problem as test_fedau.py: average_all converges to argmin Σ p_n F_n (biased); MIFA and
    # FedVARP weigh every client 1/N through their stored updates and reach the true optimum.
    # Numbers (seed 0): average_all 0.64, mifa 0.045, fedvarp 0.046 (average_participating 0.67).
    p, _ = correlated_probs(BIASED)
    dist = {}
    for name in ["average_all", "mifa", "fedvarp"]:
        run_raw(merge(BIASED, participation={"name": "bernoulli", "probs": p}, strategy={"name": name}),
                tmp_path / name)
        dist[name] = read_metrics(tmp_path / name)[-1]["optimum_distance"]
    assert dist["average_all"] > 0.4
    assert dist["mifa"] * 5 <= dist["average_all"] and dist["fedvarp"] * 5 <= dist["average_all"]
