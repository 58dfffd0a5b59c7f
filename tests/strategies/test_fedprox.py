"""FedProx: hand-computed client and server steps; its fixed point on least squares."""

import numpy as np
from client_harness import least_squares_blocks, local_gd_fixed_point, make_trainer
from conftest import LINREG, merge, read_metrics, run_raw

from fedsim.types import ClientUpdate, RoundInfo
from strategies.fedprox import FedProx


def test_client_steps_by_hand():
    # One example x = 2, y = 1; model [w, b]; F = ½(2w + b − 1)²; start w_t = [0, 0]; lr 0.1, μ 0.5.
    # step 1 at [0, 0]: residual −1, ∇F = [−2, −1], prox 0          -> [0.2, 0.1]
    # step 2 at [0.2, 0.1]: residual −0.5, ∇F = [−1, −0.5],
    #         prox 0.5·[0.2, 0.1] = [0.1, 0.05], sum [−0.9, −0.45]     -> [0.29, 0.145]
    s = FedProx(mu=0.5)
    trainer, task = make_trainer([[2.0]], [1.0], [0.0, 0.0], s, steps=2, lr=0.1)
    update, state = s.client_update(task, trainer, None)
    np.testing.assert_allclose(update.delta, [0.29, 0.145], rtol=1e-6)
    assert state is None


def test_server_is_fedavg_rule():
    # a = n_i/Σn = [1/4, 3/4]; step = ¼[1, 0] + ¾[0, 2] = [0.25, 1.5]; x = [1, 1] + step.
    s = FedProx()
    ups = [ClientUpdate(0, np.array([1, 0], np.float32), 1, 0), ClientUpdate(1, np.array([0, 2], np.float32), 3, 0)]
    _, x = s.aggregate(s.init(np.ones(2, np.float32), 2), np.ones(2, np.float32), ups, RoundInfo(0, 2, (0, 1), 0.0))
    np.testing.assert_allclose(x, [1.25, 2.5])


def test_linear_regression_reaches_stated_fixed_point(tmp_path):
    # Full-batch GD, 20 steps, heterogeneous curvatures: FedProx converges to the point
    # Σ_k P_k(A_k z − b_k) = 0 (client_harness.local_gd_fixed_point), not to w*.
    raw = merge(LINREG, strategy={"name": "fedprox", "mu": 0.5}, client={"local_steps": 10, "lr": 0.1},
                data={"dataset": {"name": "linear_regression", "dim": 5, "samples_per_client": 20,
                                  "heterogeneity": 1.0, "noise": 0.1, "input_spread": 0.6},
                      "num_clients": 5},
                engine={"rounds": 60})
    res = run_raw(raw, tmp_path)
    a, b, w_star = least_squares_blocks(raw)
    z = local_gd_fixed_point(a, b, steps=10, lr=0.1, mu=0.5)
    assert np.linalg.norm(res.params - z) < 1e-4
    assert np.linalg.norm(z - w_star) > 0.05  # biased, like FedAvg
    assert read_metrics(tmp_path)[-1]["optimum_distance"] > 0.05
