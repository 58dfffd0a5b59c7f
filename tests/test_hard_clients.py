"""data.hard_clients: label noise, feature noise and a negated domain on chosen clients only."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LINREG, TINY, merge, run_raw

from fedsim.data.datasets import GaussianMixture
from fedsim.data.federated import federate
from fedsim.data.partition import Iid
from fedsim.errors import RunError, ScenarioError
from fedsim.runner import build_data
from fedsim.scenario.loading import from_mapping
from fedsim.scenario.schema import HardClients


def build(hard: HardClients | None, n: int = 5):
    seeds = {"dataset": 1, "partition": 2, "local_split": 3, "hard_clients": 4}
    return federate(GaussianMixture(num_samples=1000, num_test=50, dim=3), Iid(), n, 0.2, seeds.__getitem__, hard)


def rows_of(data, k):
    return (data.x_train[data.train_slice(k)], data.y_train[data.train_slice(k)],
            data.x_val[data.val_slice(k)], data.y_val[data.val_slice(k)])


def test_only_chosen_clients_change():
    clean = build(None)
    hard = build(HardClients(clients=(1, 3), label_noise=0.5, feature_noise=0.1, negate=True))
    np.testing.assert_array_equal(hard.x_test, clean.x_test)  # global test set untouched
    for k in (0, 2, 4):
        for a, b in zip(rows_of(hard, k), rows_of(clean, k), strict=True):
            np.testing.assert_array_equal(a, b)
    for k in (1, 3):
        xt, yt, xv, yv = rows_of(hard, k)
        cxt, cyt, cxv, cyv = rows_of(clean, k)
        # negate after noise: x' = -(x + ε), so x' + x = -ε with std 0.1
        assert (xt + cxt).std() == pytest.approx(0.1, rel=0.2) and abs((xt + cxt).mean()) < 0.03
        flipped = np.concatenate([yt != cyt, yv != cyv])
        assert 0.35 < flipped.mean() < 0.65  # label_noise = 0.5, always to a different class


def test_label_noise_never_keeps_the_label_and_fraction_picks_clients():
    clean = build(None, n=10)
    hard = build(HardClients(fraction=0.2, label_noise=1.0), n=10)
    changed = [k for k in range(10) if not np.array_equal(rows_of(hard, k)[1], rows_of(clean, k)[1])]
    assert len(changed) == 2  # ceil(0.2 · 10)
    for k in changed:
        assert np.all(rows_of(hard, k)[1] != rows_of(clean, k)[1])
    again = build(HardClients(fraction=0.2, label_noise=1.0), n=10)
    np.testing.assert_array_equal(again.y_train, hard.y_train)  # deterministic


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="hard_clients.clients: client 7 is not in 0..4"):
        build(HardClients(clients=(7,)))
    with pytest.raises(RunError, match="hard_clients: only for classification"):
        build_data(from_mapping(merge(LINREG, data={"hard_clients": {"clients": [0], "negate": True}})))
    with pytest.raises(ScenarioError, match="data.hard_clients.label_noise: must be <= 1"):
        from_mapping(merge(TINY, data={"hard_clients": {"label_noise": 2}}))


def test_runs_through_a_scenario(tmp_path):
    res = run_raw(merge(TINY, data={"hard_clients": {"clients": [0], "label_noise": 0.3}}, engine={"rounds": 2}),
                  tmp_path)
    assert np.all(np.isfinite(res.params))
