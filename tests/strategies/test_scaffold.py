"""SCAFFOLD (option II): hand-computed client and server steps; reaches w* on least squares."""

import numpy as np
from client_harness import make_trainer
from conftest import LINREG, merge, read_metrics, run_raw

from fedsim.types import ClientUpdate, RoundInfo
from strategies.scaffold import Scaffold, ScaffoldDown, ScaffoldState, ScaffoldUp


def test_client_steps_by_hand():
    # x = 2, y = 1, model [w, b], start x = [0, 0], lr 0.1, K = 2, c = [0.1, 0], c_i = [0.3, 0.2].
    # correction c − c_i = [−0.2, −0.2]
    # step 1 at [0, 0]:       ∇F = [−2, −1]      + corr = [−2.2, −1.2]  -> y = [0.22, 0.12]
    # step 2 at [0.22, 0.12]: residual −0.44, ∇F = [−0.88, −0.44] + corr = [−1.08, −0.64]
    #                                                                  -> y = [0.328, 0.184]
    # c_i⁺ = c_i − c + (x − y)/(Kη) = [0.2, 0.2] − [1.64, 0.92] = [−1.44, −0.72]
    # Δc = c_i⁺ − c_i = [−1.74, −0.92]
    s = Scaffold()
    trainer, task = make_trainer([[2.0]], [1.0], [0.0, 0.0], s, steps=2, lr=0.1,
                                 down=ScaffoldDown(np.array([0.1, 0.0], np.float32)))
    update, c_i = s.client_update(task, trainer, np.array([0.3, 0.2], np.float32))
    np.testing.assert_allclose(update.delta, [0.328, 0.184], rtol=1e-6)
    np.testing.assert_allclose(c_i, [-1.44, -0.72], rtol=1e-5)
    np.testing.assert_allclose(update.up.delta_c, [-1.74, -0.92], rtol=1e-5)


def test_server_by_hand():
    # N = 4, x = [1, 1], c = 0; Δy = [1, 0], [0, 2]; Δc = [2, 0], [0, 4]
    # x ← x + mean Δy = [1.5, 2.0];  c ← c + (1/N) Σ Δc = [0.5, 1.0]
    s = Scaffold()
    ups = [ClientUpdate(0, np.array([1, 0], np.float32), 1, 0, up=ScaffoldUp(np.array([2, 0], np.float32))),
           ClientUpdate(1, np.array([0, 2], np.float32), 1, 0, up=ScaffoldUp(np.array([0, 4], np.float32)))]
    state0 = s.init(np.ones(2, np.float32), 4)
    state, x = s.aggregate(state0, np.ones(2, np.float32), ups, RoundInfo(0, 4, (0, 1), 0.0))
    np.testing.assert_allclose(x, [1.5, 2.0])
    np.testing.assert_allclose(state.c, [0.5, 1.0])
    assert isinstance(state, ScaffoldState) and np.all(state0.c == 0)
    np.testing.assert_allclose(s.configure(state, 0, RoundInfo(1, 4, (), 0.0)).c, [0.5, 1.0])


def test_linear_regression_reaches_optimum(tmp_path):
    # Heterogeneous curvatures and 10 local GD steps: FedAvg is biased here (see
    # test_fedspeed), SCAFFOLD's control variates remove the drift.
    raw = merge(LINREG, strategy={"name": "scaffold"}, client={"local_steps": 10, "lr": 0.1},
                data={"dataset": {"name": "linear_regression", "dim": 5, "samples_per_client": 20,
                                  "heterogeneity": 1.0, "noise": 0.1, "input_spread": 0.6},
                      "num_clients": 5},
                engine={"rounds": 60})
    run_raw(raw, tmp_path)
    assert read_metrics(tmp_path)[-1]["optimum_distance"] < 1e-4
