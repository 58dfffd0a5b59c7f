"""System model durations, channel noise, fairness numbers — hand-computed."""

import numpy as np
import pytest

from fedsim.results.fairness import fairness
from fedsim.world import channel, system


def test_linear_spread_matches_fedfix_f80():
    # FedFix's F-X scenario (Fraboni et al., JMLR 2023): tau_i = 1 - (X/100) i/(M-1); F-80 with M=5 -> 1, .8, .6, .4, .2
    tau = system.LinearSpread(spread=80).draw(5, np.random.default_rng(0))
    assert np.allclose(tau, [1.0, 0.8, 0.6, 0.4, 0.2])


@pytest.mark.parametrize("m", [10, 20, 50])
@pytest.mark.parametrize("x", [0.0, 50.0, 80.0])
def test_linear_spread_is_bit_identical_to_fraboni_get_tau_i(m, x):
    # Fraboni et al. (JMLR 2023), code FL/clients_schedule.py: [1 - i * X/100 / (M - 1) ...] in
    # Python floats. The F-80 schedules depend on exact ties, so equality is exact, not approximate.
    paper = np.array([1 - i * x / 100 / (m - 1) for i in range(m)])
    tau = system.LinearSpread(spread=x).draw(m, np.random.default_rng(0))
    assert tau.tolist() == paper.tolist()


def test_duration_is_compute_times_work_plus_communication():
    cfg = system.SystemConfig(compute=system.Constant(time=0.5), bandwidth_mbps=8.0, latency=0.1)
    model = system.SystemModel(cfg, 3, model_bytes=1_000_000, speed_rng=np.random.default_rng(0))
    # comm one way = 1e6 B * 8 / 8e6 b/s + 0.1 s = 1.1 s; compute = 0.5 * 4 steps = 2 s
    finish, arrive, dropped = model.duration(1, 4, np.random.default_rng(0))
    assert finish == pytest.approx(1.1 + 2.0)
    assert arrive == pytest.approx(1.1 + 2.0 + 1.1)
    assert not dropped
    per_job = system.SystemModel(system.SystemConfig(time_per="job"), 2, 4, np.random.default_rng(0))
    assert per_job.duration(0, 50, np.random.default_rng(0))[1] == pytest.approx(1.0)


def test_fairness_numbers():
    acc = np.array([1.0, 0.5, 0.5, 0.0, np.nan])  # NaN = client without local test data
    f = fairness(acc)
    assert f["client_accuracy_mean"] == pytest.approx(0.5)
    assert f["client_accuracy_min"] == 0.0
    assert f["client_accuracy_worst10"] == 0.0  # ceil(0.1*4)=1 worst client
    assert f["client_accuracy_std"] == pytest.approx(np.sqrt(0.125))
    # Jain = (sum x)^2 / (n sum x^2) = 4 / (4 * 1.5)
    assert f["jain_index"] == pytest.approx(2 / 3)


def test_channel_noise_is_keyed_by_client_and_dispatch():
    cfg = channel.ChannelConfig(downlink_noise_std=0.1, uplink_noise_std=0.2)
    x = np.zeros(1000, np.float32)
    a = channel.downlink(cfg, x, 0, client=3, dispatch=7)
    assert np.array_equal(a, channel.downlink(cfg, x, 0, client=3, dispatch=7))
    assert not np.array_equal(a, channel.downlink(cfg, x, 0, client=4, dispatch=7))
    assert a.std() == pytest.approx(0.1, rel=0.1)
    assert channel.uplink(cfg, x, 0, 3, 7).std() == pytest.approx(0.2, rel=0.1)
