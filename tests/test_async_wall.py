"""The async loop on the wall clock (`engine.clock: wall`, fedsim.engine.wall_loop): updates are
committed in the order the executor really returns them, at real times. The first two tests
use a fake clock that only moves when a scripted result comes back (or a wait times out), so
every time is exact; the third uses the real clock and checks order, not durations."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
from conftest import TINY, merge
from fake_async import QuadraticExecutor, build, events

from fedsim.engine.wall_loop import WallLoop
from fedsim.errors import ScenarioError
from fedsim.flower.serve import with_clock
from fedsim.scenario.loading import from_mapping
from fedsim.types import JobResult
from strategies.async_fedavg import AsyncFedAvg
from strategies.fedfix import FedFix


class RealOrder(QuadraticExecutor):
    """Results come back in a scripted real order: entry (client, wall time[, error]) returns the
    oldest in-flight job of that client at that time. The fake clock moves only here."""

    def __init__(self, centers: Sequence[float], lr: float, script: Sequence[tuple]):
        super().__init__(centers, lr)
        self.script = list(script)
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        self.now += dt

    def poll(self, timeout: float | None) -> JobResult | None:
        if not self.script or (timeout is not None and self.script[0][1] > self.now + timeout):
            if timeout is None:
                raise AssertionError("the loop waits for a result the script does not have")
            self.now += timeout
            return None
        client, at, *error = self.script.pop(0)
        job = next(j for j in self.queue if j.task.client == client)
        self.queue.remove(job)
        self.queue.append(job)
        result = QuadraticExecutor.next_result(self)  # computes the job we moved to the end
        self.now = max(self.now, at)
        if error:
            return JobResult(job.id, client, None, job.client_state, error[0])
        return result


def kinds(evs, kind, *keys):
    return [tuple(e[k] for k in keys) for e in evs if e["kind"] == kind]


def wall_run(eng, ex: RealOrder, tmp_path):
    WallLoop(eng, clock=ex.clock, sleep=ex.sleep).run()
    eng.history.close()
    return events(tmp_path)


def test_commits_follow_real_order_with_a_timed_out_job(tmp_path):
    # AsyncFedAvg (one version per arrival, θ ← θ + Δ), c = (0, 4, 8), client lr 0.5: Δ = 0.5 (c − θ_start).
    # The system model says client 0 is fastest (τ = 1, 2, 3); the wall clock ignores it.
    # t=0: jobs 0, 1, 2 for clients 0, 1, 2 from θ=0 (v0).
    # t=1: job 2 (c2, Δ = 4, s 0) → v1, θ = 4; job 3 (c2) from θ=4 (v1).
    # t=2: job 0 (c0, Δ = 0, s = 1 − 0 = 1) → v2, θ = 4; job 4 (c0) from θ=4 (v2).
    # t=3: job 1 times out (the executor reports the failure) → drop; job 5 (c1) from v2.
    # t=4.5: job 3 (c2 from θ=4: Δ = 2, s = 2 − 1 = 1) → v3, θ = 6; job 6 (c2) from v3.
    # t=5: job 4 (c0 from θ=4: Δ = −2, s = 3 − 2 = 1) → v4, θ = 4 = max_versions: stop.
    eng, _, ev = build(tmp_path, [1.0, 2.0, 3.0], AsyncFedAvg(), lr=0.5, max_versions=4, clock="wall")
    ex = RealOrder([0.0, 4.0, 8.0], 0.5, [(2, 1.0), (0, 2.0), (1, 3.0, "no reply within 2 s"), (2, 4.5),
                                           (0, 5.0)])
    eng.executor = ex
    evs = wall_run(eng, ex, tmp_path)
    assert kinds(evs, "arrive", "job", "client", "virtual_time", "version", "staleness") == [
        (2, 2, 1.0, 0, 0), (0, 0, 2.0, 1, 1), (3, 2, 4.5, 2, 1), (4, 0, 5.0, 3, 1)]
    assert kinds(evs, "drop", "job", "client", "virtual_time", "reason") == [
        (1, 1, 3.0, "client error: no reply within 2 s")]
    assert kinds(evs, "commit", "version", "virtual_time", "num_updates") == [
        (1, 1.0, 1), (2, 2.0, 1), (3, 4.5, 1), (4, 5.0, 1)]
    assert kinds(evs, "dispatch", "job", "client", "virtual_time", "version") == [
        (0, 0, 0.0, 0), (1, 1, 0.0, 0), (2, 2, 0.0, 0), (3, 2, 1.0, 1), (4, 0, 2.0, 2), (5, 1, 3.0, 2),
        (6, 2, 4.5, 3)]
    assert not kinds(evs, "finish", "job")  # compute end is not observed on the wall clock
    assert ev.points == [0.0, 4.0, 4.0, 6.0, 4.0]
    times = [e["virtual_time"] for e in evs]
    assert times == sorted(times)
    assert eng.version == 4 and eng.now == 5.0 and eng.counters.num_failed == 1 and eng.counters.num_updates == 4


def test_fedfix_ticks_at_real_interval(tmp_path):
    # FedFix Δt = 1, identical weights d_i = 1/3, on_commit, c = (0, 3, 6), lr 0.5.
    # 0.25: job 2 (c2, Δ = 3); 0.5: job 1 (c1, Δ = 1.5); no result before 1.0, the wait times out;
    # tick 1 at 1.0 → v1, θ = (3 + 1.5)/3 = 1.5; clients 1, 2 restart (jobs 3, 4) from v1.
    # 1.5: job 0 (c0 from v0: Δ = 0, s 1); 1.75: job 4 (c2 from 1.5: Δ = 2.25); tick 2 at 2.0 → v2,
    # θ = 1.5 + 2.25/3 = 2.25 = max_versions: stop.
    eng, _, ev = build(tmp_path, [1.5, 1.0, 0.4], FedFix(commit_interval=1.0, weighting="identical"),
                       lr=0.5, max_versions=2, redispatch="on_commit", clock="wall")
    ex = RealOrder([0.0, 3.0, 6.0], 0.5, [(2, 0.25), (1, 0.5), (0, 1.5), (2, 1.75)])
    eng.executor = ex
    evs = wall_run(eng, ex, tmp_path)
    assert kinds(evs, "arrive", "job", "client", "virtual_time", "version", "staleness") == [
        (2, 2, 0.25, 0, 0), (1, 1, 0.5, 0, 0), (0, 0, 1.5, 1, 1), (4, 2, 1.75, 1, 0)]
    assert kinds(evs, "commit", "version", "virtual_time", "num_updates") == [(1, 1.0, 2), (2, 2.0, 2)]
    assert kinds(evs, "dispatch", "job", "client", "virtual_time") == [
        (0, 0, 0.0), (1, 1, 0.0), (2, 2, 0.0), (3, 1, 1.0), (4, 2, 1.0)]
    np.testing.assert_allclose(ev.points, [0.0, 1.5, 2.25])


def test_real_clock_follows_executor_order(tmp_path):
    # QuadraticExecutor returns the newest job first; the wall clock commits in exactly that order.
    eng, ex, _ = build(tmp_path, [1.0, 2.0, 3.0], AsyncFedAvg(), centers=[0.0, 4.0, 8.0], lr=0.5,
                       max_versions=5, clock="wall")
    eng.run()  # Engine.run → run_async → WallLoop (engine.clock: wall)
    eng.history.close()
    evs = events(tmp_path)
    arrivals = kinds(evs, "arrive", "job", "client", "staleness")
    # t0: jobs 0,1,2; LIFO → job 2 first, then its replacement job 3 (c2) is newest, and so on:
    # client 2 keeps winning, jobs 0 and 1 stay in flight.
    assert arrivals == [(2, 2, 0), (3, 2, 0), (4, 2, 0), (5, 2, 0), (6, 2, 0)]
    times = [e["virtual_time"] for e in evs]
    assert all(t >= 0.0 for t in times) and times == sorted(times)
    assert eng.version == 5


def test_clock_config_and_deploy_default():
    sync = from_mapping(TINY)
    assert sync.engine.clock == "virtual"
    assert with_clock(sync, "wall") is sync  # sync rounds keep the virtual clock
    asyn = from_mapping(merge(TINY, engine={"mode": "async", "max_versions": 3}, strategy={"name": "fedbuff"}))
    assert with_clock(asyn, "wall").engine.clock == "wall"
    assert with_clock(asyn, "virtual").engine.clock == "virtual"
    with pytest.raises(ScenarioError, match=r"engine\.clock: the wall clock is implemented for engine.mode async"):
        from_mapping(merge(TINY, engine={"mode": "sync", "clock": "wall"}))


class SilentGrid:
    """A Flower Grid stand-in whose nodes never answer."""

    def push_messages(self, msgs):
        return [f"m{i}" for i, _ in enumerate(msgs)]

    def pull_messages(self, ids):
        return []


def test_grid_executor_poll_times_out_then_reports_the_job_failed(monkeypatch):
    from fedsim.flower import grid
    from fedsim.flower.grid import GridExecutor
    from fedsim.types import ClientTask, Job

    # Flower's Message needs a running ServerApp; the messages' content does not matter here
    monkeypatch.setattr(grid, "Message", lambda *a, **k: object())
    ex = GridExecutor(SilentGrid(), {}, 1, poll=0.001, job_timeout=0.05)
    ex.nodes = [7]
    ex.submit([Job(0, ClientTask(0, np.zeros(2, dtype=np.float32), 0, 0, 0, 1))])
    assert ex.poll(0.0) is None  # nothing back yet, the job is still in flight
    r = ex.next_result()  # blocks until the job timeout turns it into a failure
    assert (r.id, r.client, r.update, r.error) == (0, 0, None, "no reply within 0.05 s")
