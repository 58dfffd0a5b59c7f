"""Build one real client (ClientRuntime + LocalTrainer) on hand-written regression data,
so client rules can be checked against numbers worked out by hand."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.data.federated import FederatedData
from fedsim.scenario.schema import ClientConfig
from fedsim.training.models import Linear
from fedsim.training.runtime import ClientRuntime, LocalTrainer
from fedsim.types import ClientTask


def make_trainer(x, y, params, strategy, *, steps: int = 1, lr: float = 0.1, round: int = 0,
                 down: Any = None) -> tuple[LocalTrainer, ClientTask]:
    """One client holding (x, y), model `linear` (params = [w..., b]), full-batch steps."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    n = len(y)
    none_x, none_y = x[:0], y[:0]
    data = FederatedData(1, 0, (x.shape[1],), x, y, np.array([0, n]), none_x, none_y,
                         np.array([0, 0]), none_x, none_y)
    cfg = ClientConfig(local_steps=steps, batch_size=1000, lr=lr)
    rt = ClientRuntime(data, Linear(device="cpu"), cfg, strategy, threads=0)
    task = ClientTask(0, np.asarray(params, dtype=np.float32), 0, round, 0, 1, down)
    return LocalTrainer(rt, task), task


def least_squares_blocks(raw: dict) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Per-client (A_k, b_k) of F_k = 1/(2n_k)‖[X 1]w − y‖² and the reported optimum."""
    from fedsim.runner import build_data
    from fedsim.scenario.loading import from_mapping

    data = build_data(from_mapping(raw))
    a_list, b_list = [], []
    for k in range(data.num_clients):
        sl = data.train_slice(k)
        xa = np.concatenate([data.x_train[sl].astype(np.float64), np.ones((sl.stop - sl.start, 1))], axis=1)
        y = data.y_train[sl].astype(np.float64)
        a_list.append(xa.T @ xa / len(y))
        b_list.append(xa.T @ y / len(y))
    return a_list, b_list, data.optimum


def local_gd_fixed_point(a_list, b_list, steps: int, lr: float, mu: float = 0.0) -> np.ndarray:
    """Fixed point of FedAvg/FedProx with `steps` full-batch GD steps on F_k + μ/2‖w − z‖²
    from z, full participation, uniform weights: Δ_k(z) = −P_k (A_k z − b_k) with
    P_k = (A_k + μI)^{-1}(I − (I − lr(A_k + μI))^steps), so Σ_k P_k(A_k z − b_k) = 0."""
    d = a_list[0].shape[0]
    lhs, rhs = np.zeros((d, d)), np.zeros(d)
    for a, b in zip(a_list, b_list, strict=True):
        m = a + mu * np.eye(d)
        p = np.linalg.solve(m, np.eye(d) - np.linalg.matrix_power(np.eye(d) - lr * m, steps))
        lhs += p @ a
        rhs += p @ b
    return np.linalg.solve(lhs, rhs)
