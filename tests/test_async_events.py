"""The async event loop in isolation (no torch): fixed durations, fake clients, results
returned by the executor in the wrong order. Expected sequences are worked out by hand in
the comments."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from fake_async import Scripted, build, run

from strategies.async_fedavg import AsyncFedAvg
from strategies.fedbuff import FedBuff
from strategies.fedfix import FedFix


def kinds(evs, kind, *keys):
    return [tuple(e[k] for k in keys) for e in evs if e["kind"] == kind]


def test_async_loop_imports_without_torch():
    code = ("import sys, fedsim.engine, fedsim.engine.async_loop, strategies.fedbuff, strategies.fedfix, "
            "strategies.async_fedavg; assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_async_fedavg_commit_order_with_ties(tmp_path):
    # τ = (2, 1, 2), concurrency 3, `sample` redispatch, one version per arrival, lr 0.5, c = (0, 4, 8).
    # t=0: jobs 0,1,2 for clients 0,1,2 (version 0).
    # t=1: job 1 (c1) arrives, staleness 0 → v1 (θ: Δ = 0.5·4 = 2 → θ = 2); job 3 (c1) starts from v1.
    # t=2: three arrivals tie; by dispatch index: job 0 (c0, s = 1−0 = 1, Δ = 0) → v2, job 4 (c0) from v2;
    #      job 2 (c2, s = 2, Δ = 4 → θ = 6) → v3, job 5 (c2); job 3 (c1, from θ=2: Δ = 1 → θ = 7, s = 3−1 = 2) → v4,
    #      job 6 (c1) from θ = 7.
    # t=3: job 6 (s = 0, Δ = −1.5 → θ = 5.5) → v5; job 7 (c1).
    # t=4: jobs 4, 5, 7 tie; job 4 first (c0 from θ = 2: Δ = −1 → θ = 4.5, s = 5−2 = 3) → v6 = max_versions: stop.
    eng, ex, ev = build(tmp_path, [2.0, 1.0, 2.0], AsyncFedAvg(), centers=[0.0, 4.0, 8.0], lr=0.5, max_versions=6)
    evs = run(eng, tmp_path)
    assert kinds(evs, "arrive", "job", "client", "virtual_time", "version", "staleness") == [
        (1, 1, 1.0, 0, 0), (0, 0, 2.0, 1, 1), (2, 2, 2.0, 2, 2), (3, 1, 2.0, 3, 2), (6, 1, 3.0, 4, 0),
        (4, 0, 4.0, 5, 3)]
    assert kinds(evs, "commit", "version", "virtual_time", "num_updates") == [
        (1, 1.0, 1), (2, 2.0, 1), (3, 2.0, 1), (4, 2.0, 1), (5, 3.0, 1), (6, 4.0, 1)]
    assert kinds(evs, "dispatch", "job", "client", "virtual_time", "version") == [
        (0, 0, 0.0, 0), (1, 1, 0.0, 0), (2, 2, 0.0, 0), (3, 1, 1.0, 1), (4, 0, 2.0, 2), (5, 2, 2.0, 3),
        (6, 1, 2.0, 4), (7, 1, 3.0, 5)]
    # every finish is logged before its arrival, at the finish time, with the staleness at that time
    assert kinds(evs, "finish", "job", "virtual_time", "staleness")[:2] == [(1, 1.0, 0), (0, 2.0, 1)]
    assert ev.points == [0.0, 2.0, 2.0, 6.0, 7.0, 5.5, 4.5]  # one evaluation per version (eval_every unset)
    times = [e["virtual_time"] for e in evs]
    assert times == sorted(times)  # the log is in virtual-time order
    assert eng.params.tolist() == [4.5] and eng.version == 6 and eng.now == 4.0


def test_timed_evaluation_points(tmp_path):
    # Same run, evaluated every 1.5 virtual seconds: t=0 (v0), 1.5 (v1), 3.0 (v5: the arrival at
    # t=3 is handled before the evaluation at t=3), and the final point at t=4 (v6).
    eng, _, ev = build(tmp_path, [2.0, 1.0, 2.0], AsyncFedAvg(), centers=[0.0, 4.0, 8.0], lr=0.5, max_versions=6,
                       eval_every_time=1.5)
    run(eng, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["version"], r["virtual_time"]) for r in rows] == [(0, 0.0), (1, 1.5), (5, 3.0), (6, 4.0)]
    assert ev.points == [0.0, 2.0, 5.5, 4.5]


def test_fedfix_ticks_and_on_commit_restarts(tmp_path):
    # τ = (1.5, 1.0, 0.4), Δt = 1, on_commit, d_i = ⌈τ_i/Δt⌉/3 = (2/3, 1/3, 1/3), lr 0.5, c = (0, 3, 6).
    # 0.4: job 2 (c2) Δ = 3;  1.0: job 1 (c1) Δ = 1.5 — arrives before the tick at the same time;
    # tick 1 → v1, θ = (3 + 1.5)/3 = 1.5; clients 1, 2 restart (jobs 3, 4) from v1; client 0 still busy.
    # 1.4: job 4 (Δ = 2.25); 1.5: job 0 (c0 from v0: Δ = 0, staleness 1); 2.0: job 3 (Δ = 0.75);
    # tick 2 → v2, θ = 1.5 + 2.25/3 + 0 + 0.75/3 = 2.5; jobs 5, 6, 7 for clients 0, 1, 2.
    # 2.4: job 7 (Δ = 1.75); 3.0: job 6 (Δ = 0.25); tick 3 → v3, θ = 2.5 + 2/3 = 3.1667; jobs 8 (c1), 9 (c2).
    # 3.4: job 9 (Δ = 1.41667); 3.5: job 5 (c0 from θ=2.5: Δ = −1.25, staleness 1); 4.0: job 8 (Δ = −0.08333)
    # tick 4 → v4, θ = 3.16667 + 1.41667/3 − 1.25·2/3 − 0.08333/3 = 2.77778.
    eng, ex, ev = build(tmp_path, [1.5, 1.0, 0.4], FedFix(commit_interval=1.0), centers=[0.0, 3.0, 6.0], lr=0.5,
                        max_versions=4, redispatch="on_commit")
    evs = run(eng, tmp_path)
    assert kinds(evs, "arrive", "job", "client", "virtual_time", "version", "staleness") == [
        (2, 2, 0.4, 0, 0), (1, 1, 1.0, 0, 0), (4, 2, 1.4, 1, 0), (0, 0, 1.5, 1, 1), (3, 1, 2.0, 1, 0),
        (7, 2, 2.4, 2, 0), (6, 1, 3.0, 2, 0), (9, 2, 3.4, 3, 0), (5, 0, 3.5, 3, 1), (8, 1, 4.0, 3, 0)]
    assert kinds(evs, "commit", "version", "virtual_time", "num_updates") == [
        (1, 1.0, 2), (2, 2.0, 3), (3, 3.0, 2), (4, 4.0, 3)]
    assert kinds(evs, "dispatch", "job", "client", "virtual_time") == [
        (0, 0, 0.0), (1, 1, 0.0), (2, 2, 0.0), (3, 1, 1.0), (4, 2, 1.0), (5, 0, 2.0), (6, 1, 2.0), (7, 2, 2.0),
        (8, 1, 3.0), (9, 2, 3.0)]
    np.testing.assert_allclose(ev.points, [0.0, 1.5, 2.5, 3.1666667, 2.7777778], atol=1e-5)


def test_fedbuff_buffer_and_staleness(tmp_path):
    # τ = (1, 1, 3), K = 2, on_commit. t=1: jobs 0, 1 (s 0) → v1; clients 0, 1 restart (jobs 3, 4).
    # t=2: jobs 3, 4 → v2; jobs 5, 6. t=3: job 2 (c2 from v0: s = 2), job 5 (s 0) → v3 (clients 0, 2
    # restart: jobs 7, 8); job 6 (c1 from v2: s = 1) waits in the buffer. t=4: job 7 (s 0) → v4.
    eng, _, _ = build(tmp_path, [1.0, 1.0, 3.0], FedBuff(buffer_size=2), max_versions=4, redispatch="on_commit")
    evs = run(eng, tmp_path)
    assert kinds(evs, "arrive", "job", "client", "virtual_time", "version", "staleness") == [
        (0, 0, 1.0, 0, 0), (1, 1, 1.0, 0, 0), (3, 0, 2.0, 1, 0), (4, 1, 2.0, 1, 0), (2, 2, 3.0, 2, 2),
        (5, 0, 3.0, 2, 0), (6, 1, 3.0, 3, 1), (7, 0, 4.0, 3, 0)]
    assert kinds(evs, "commit", "version", "virtual_time", "num_updates") == [
        (1, 1.0, 2), (2, 2.0, 2), (3, 3.0, 2), (4, 4.0, 2)]
    assert kinds(evs, "dispatch", "job", "client", "virtual_time") == [
        (0, 0, 0.0), (1, 1, 0.0), (2, 2, 0.0), (3, 0, 1.0), (4, 1, 1.0), (5, 0, 2.0), (6, 1, 2.0), (7, 0, 3.0),
        (8, 2, 3.0)]


def test_offline_clients_are_dropped_and_not_computed(tmp_path):
    # slot 1, τ = (2.5, 1). Client 0 is offline during slot 1 only. Job 0 (c0) would arrive at 2.5,
    # so with drop_offline it is dropped at t = 1 and never submitted. At t = 1 client 0 is offline:
    # only client 1 restarts (job 2); at t = 2 both are online: jobs 3 (c0) and 4 (c1).
    proc = Scripted([[True, True], [False, True], [True, True]])
    eng, ex, _ = build(tmp_path, [2.5, 1.0], AsyncFedAvg(), participation=proc, max_versions=3, drop_offline=True)
    evs = run(eng, tmp_path)
    assert kinds(evs, "drop", "job", "client", "virtual_time", "reason") == [(0, 0, 1.0, "offline")]
    assert 0 not in ex.submitted
    assert kinds(evs, "arrive", "job", "client", "virtual_time", "version", "staleness") == [
        (1, 1, 1.0, 0, 0), (2, 1, 2.0, 1, 0), (4, 1, 3.0, 2, 0)]
    assert kinds(evs, "dispatch", "job", "client", "virtual_time") == [
        (0, 0, 0.0), (1, 1, 0.0), (2, 1, 1.0), (3, 0, 2.0), (4, 1, 2.0)]
    assert proc.calls == sorted(set(proc.calls)) and proc.calls[0] == 0  # every slot drawn once, in order


def test_without_drop_offline_jobs_finish(tmp_path):
    proc = Scripted([[True, True], [False, True], [True, True]])
    eng, _, _ = build(tmp_path, [2.5, 1.0], AsyncFedAvg(), participation=proc, max_versions=3)
    evs = run(eng, tmp_path)
    assert kinds(evs, "drop", "job") == []
    assert kinds(evs, "arrive", "job", "virtual_time") == [(1, 1.0), (2, 2.0), (0, 2.5)]


def test_stop_conditions(tmp_path):
    eng, _, _ = build(tmp_path / "t", [2.0, 1.0, 2.0], AsyncFedAvg(), max_time=2.5)
    evs = run(eng, tmp_path / "t")
    assert eng.version == 4 and eng.now == 2.5  # arrivals at 1, 2, 2, 2; the next is at 3
    assert max(e["virtual_time"] for e in evs) <= 2.5
    eng, _, _ = build(tmp_path / "u", [2.0, 1.0, 2.0], FedBuff(buffer_size=2), max_updates=3)
    run(eng, tmp_path / "u")
    assert eng.counters.num_updates == 3 and eng.version == 1


def _average_second_half(points):
    return float(np.mean(points[len(points) // 2:]))


# Analytic check of Fraboni et al. (JMLR 2023)'s schedules, numbers from a numpy re-implementation of
# their official code's schedules: M = 10, F-80 times, ½(θ − c_i)², 1 GD step of 0.02, lr_g = 1, θ
# averaged over the second half of the server steps (sampling θ at fixed times instead aliases with the
# periodic schedule). Shorter horizon (T = 100); tolerance ~0.01 (staleness with a finite lr).
C_SORTED = np.sort(np.random.default_rng(0).normal(0, 1, 10))
TAU = 1 - 0.8 * np.arange(10) / 9
TRUE = float(C_SORTED.mean())  # 0.0847
ASYNC_IDENTICAL = float((1 / TAU) @ C_SORTED / (1 / TAU).sum())  # 0.4600
FEDBUFF_IDENTICAL = 0.4269  # Σ f_i c_i / Σ f_i from the reference schedule


@pytest.mark.parametrize("strategy, expected, tol, lr", [
    (AsyncFedAvg(), ASYNC_IDENTICAL, 0.01, 0.02),
    (AsyncFedAvg(weighting="weight"), TRUE, 0.015, 0.02),
    (FedFix(commit_interval=0.5), TRUE, 0.01, 0.02),
    # small weights d = P converge slowly: larger local lr (the limit does not depend on it here)
    (FedFix(commit_interval=0.5, weighting="identical"), 0.2928, 0.01, 0.05),
    (FedBuff(buffer_size=5, buffer_reduction="mean"), FEDBUFF_IDENTICAL, 0.01, 0.02),
    (FedBuff(buffer_size=5, buffer_reduction="sum", weighting="fraboni"), TRUE, 0.015, 0.02),
], ids=["async-identical", "async-weight", "fedfix-0.5-weight", "fedfix-0.5-identical", "fedbuff-5-identical",
        "fedbuff-5-fraboni"])
def test_fraboni_surrogate_limits(tmp_path, strategy, expected, tol, lr):
    eng, _, ev = build(tmp_path, list(TAU), strategy, centers=C_SORTED, lr=lr, max_time=100.0,
                       eval_every=1, redispatch="on_commit")
    run(eng, tmp_path)
    assert abs(_average_second_half(ev.points) - expected) < tol


def test_on_commit_with_a_buffer_that_cannot_fill_stalls_loudly(tmp_path):
    from fedsim.errors import Stalled

    # 2 clients, buffer of 3, on_commit: both wait for a commit after t = 1; the timed evaluations
    # would otherwise keep the loop alive forever.
    eng, _, _ = build(tmp_path, [1.0, 1.0], FedBuff(buffer_size=3), max_versions=2, concurrency=5,
                      redispatch="on_commit", eval_every_time=1.0)
    with pytest.raises(Stalled, match="stalled at virtual time 1"):
        eng.run()
