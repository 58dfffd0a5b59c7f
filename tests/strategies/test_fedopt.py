"""FedAdam / FedYogi / FedAdagrad: the same parameters as Flower's own strategies on the same
updates, and convergence to the closed-form least-squares optimum."""

from __future__ import annotations

import numpy as np
import pytest
from client_harness import least_squares_blocks
from conftest import LINREG, merge, run_raw

from fedsim.scenario.fields import build_plugin
from fedsim.strategy.server_opt import server_step
from fedsim.types import ClientUpdate, RoundInfo

SHAPES = [(2, 3), (4,)]  # Flower sees two layers; fedsim the same 10 numbers, flat
ROUNDS, CLIENTS = 6, 4


def _updates(seed: int) -> list[list[tuple[np.ndarray, int]]]:
    """Per round, per client: a float32 Δ_i (bounded away from 0 so the comparison is well
    conditioned) and its number of examples."""
    rng = np.random.default_rng(seed)
    d = sum(int(np.prod(s)) for s in SHAPES)
    sign = rng.choice([-1.0, 1.0], size=d)
    out = []
    for _ in range(ROUNDS):
        out.append([((sign * rng.uniform(0.2, 1.0, d) * 0.3).astype(np.float32), int(rng.integers(5, 50)))
                    for _ in range(CLIENTS)])
    return out


def _layers(flat: np.ndarray) -> list[np.ndarray]:
    out, i = [], 0
    for s in SHAPES:
        n = int(np.prod(s))
        out.append(flat[i:i + n].reshape(s).astype(np.float64))
        i += n
    return out


def _flower(kind: str, x0: np.ndarray, rounds) -> np.ndarray:
    from flwr.common import (
        Code,
        FitRes,
        Status,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )
    from flwr.server import strategy as fl

    cls = {"fedadam": fl.FedAdam, "fedyogi": fl.FedYogi, "fedadagrad": fl.FedAdagrad}[kind]
    strat = cls(initial_parameters=ndarrays_to_parameters(_layers(x0)))  # Flower's defaults
    for r, ups in enumerate(rounds, start=1):
        current = strat.current_weights
        results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(
            [w + dl for w, dl in zip(current, _layers(delta), strict=True)]), n, {})) for delta, n in ups]
        params, _ = strat.aggregate_fit(r, results, [])
    return np.concatenate([a.ravel() for a in parameters_to_ndarrays(params)])


def _fedsim(block: dict, x0: np.ndarray, rounds) -> np.ndarray:
    """The engine's sync path: aggregate, then the server optimiser, model kept in float32."""
    s = build_plugin("strategy", block, "strategy")
    params = x0.astype(np.float32)
    state, opt_state = s.init(params, CLIENTS), s.server_opt.init(params)
    for r, ups in enumerate(rounds):
        updates = [ClientUpdate(i, delta, n, r) for i, (delta, n) in enumerate(ups)]
        state, new = s.aggregate(state, params, updates, RoundInfo(r, CLIENTS, tuple(range(CLIENTS)), 0.0))
        opt_state, out = server_step(s.server_opt, opt_state, params, new)
        params = out.astype(np.float32)
    return params


@pytest.mark.parametrize("kind, block", [
    # Flower's FedAdam has carried Kingma & Ba's bias correction (shifted by one round) since its PR #4362
    ("fedadam", {"name": "fedadam", "server_opt": {"bias_correction": "flower"}}),
    ("fedyogi", {"name": "fedyogi"}),
    ("fedadagrad", {"name": "fedadagrad"}),
])
def test_same_parameters_as_flower(kind, block):
    pytest.importorskip("flwr")
    rounds = _updates(seed=3)
    x0 = np.random.default_rng(0).normal(size=10).astype(np.float32)
    ours, theirs = _fedsim(block, x0, rounds), _flower(kind, x0, rounds)
    assert np.abs(ours - x0).max() > 0.05  # the optimiser really moved the model
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_without_bias_correction_fedadam_differs_from_current_flower():
    pytest.importorskip("flwr")
    rounds = _updates(seed=3)
    x0 = np.zeros(10, np.float32)
    ours, theirs = _fedsim({"name": "fedadam"}, x0, rounds), _flower("fedadam", x0, rounds)
    assert np.abs(ours - theirs).max() > 1e-3  # the paper's rule, not Flower's corrected one


def test_fedadam_converges_to_the_least_squares_optimum(tmp_path):
    # One full-batch GD step per client and full participation: FedAvg's Δ_t is −lr ∇F(x_t) of
    # the pooled least squares, so any fixed point of the server optimiser is its closed-form w*.
    raw = merge(LINREG, strategy={"name": "fedadam", "server_opt": {"lr": 0.02, "tau": 0.01}},
                engine={"rounds": 400})
    res = run_raw(raw, tmp_path)
    _, _, w_star = least_squares_blocks(raw)
    assert np.linalg.norm(w_star) > 1.0  # the linear model starts at 0, far from w*
    assert np.linalg.norm(res.params - w_star) < 1e-5  # measured: 3.5e-7 (float32 model)
