"""The ray and flower executors: same metrics as inline, client failures recorded, Ray cluster.

Slow tests share one Ray cluster started with `ray start --head` on 127.0.0.1 (free ports,
private temp dir) and stopped by PID at the end of the module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import TINY, merge, read_metrics, run_raw

from fedsim.types import ClientTask, ClientUpdate, Job, JobResult
from strategies.admm import AdmmClient
from strategies.fedavg import FedAvg
from strategies.fedce import FedCEDown
from strategies.scaffold import ScaffoldDown, ScaffoldUp

RAY_BIN = Path(sys.executable).parent / "ray"


@dataclass(frozen=True, kw_only=True)
class Stateful:
    """Test strategy: FedAvg whose client keeps per-client state between its jobs (a
    tuple with a numpy counter, to exercise the codec) that changes its local step size,
    so a lost or misrouted state changes the metrics; client `fail` raises."""

    modes: ClassVar[tuple[str, ...]] = ("sync",)

    fail: int = -1

    def init(self, params, num_clients):
        return FedAvg().init(params, num_clients)

    def aggregate(self, state, params, updates, info):
        return FedAvg().aggregate(state, params, updates, info)

    def client_update(self, task: ClientTask, trainer, client_state):
        if task.client == self.fail:
            raise ValueError(f"client {task.client} is broken on purpose")
        count = 0 if client_state is None else int(client_state[1][0])
        new, loss = trainer.sgd(task.params, lr=trainer.lr / (1 + count))
        return trainer.make_update(new, loss, calls=float(count)), ("calls", np.array([count + 1]))


@pytest.fixture
def stateful(monkeypatch):
    import strategies

    monkeypatch.setitem(strategies.STRATEGIES, "stateful", f"{Stateful.__module__}:Stateful")


ASYNC = merge(TINY, engine={"mode": "async", "concurrency": 3, "max_versions": 8},
              strategy={"name": "fedbuff", "buffer_size": 2}, metrics={"eval_every": 2},
              system={"compute": {"name": "lognormal", "mean": 0.1, "sigma": 1.0}})
SYNC = merge(TINY, participation={"name": "uniform", "k": 4}, engine={"rounds": 4},
             strategy={"name": "stateful"}, metrics={"eval_every": 2})


# -- fast: scheduling -------------------------------------------------------------------------

def test_longest_first_orders_by_examples_pushed_through_the_model():
    from fedsim.executors import Setup, longest_first
    from fedsim.scenario.schema import ClientConfig

    # Clients with 3, 40, 10, 0 and 20 training rows (train_offsets), batch 16, 5 steps:
    # work = 5 * min(16, n) = 15, 80, 50, 5 (an empty client still costs its steps), 80.
    data = type("D", (), {"train_offsets": np.array([0, 3, 43, 53, 53, 73])})()
    setup = Setup(data, None, ClientConfig(local_steps=5, batch_size=16), None, 0)
    assert [setup.work(c) for c in range(5)] == [15, 80, 50, 5, 80]
    epochs = Setup(data, None, ClientConfig(local_epochs=2, batch_size=16), None, 0)
    assert [epochs.work(c) for c in range(5)] == [6, 80, 20, 2, 40]  # 2 passes over n rows
    jobs = [Job(i, ClientTask(c, None, 0, 0, i, 0), None) for i, c in enumerate([0, 1, 2, 3, 4])]
    assert [j.task.client for j in longest_first(jobs, setup)] == [1, 4, 2, 0, 3]  # ties: submission order


# -- fast: codec ------------------------------------------------------------------------------

def test_codec_round_trips_jobs_and_results_exactly():
    codec = pytest.importorskip("fedsim.flower.codec")
    params = np.random.default_rng(0).normal(size=7).astype(np.float32)
    state = {"c": np.arange(3.0), "t": (1, np.float32(0.1), "x"), 5: [None, True, 1e-310, float("nan")]}
    job = Job(3, ClientTask(2, params, 1, 1, 3, 2**63 + 5, ScaffoldDown(params[:3])), state, 1.5)
    back = codec.decode_job(codec.encode_job(job), ScaffoldDown)
    assert back.id == 3 and back.task.seed == 2**63 + 5 and back.finish_time == 1.5
    assert back.task.params.dtype == np.float32 and np.array_equal(back.task.params, params)
    assert type(back.task.down) is ScaffoldDown and np.array_equal(back.task.down.c, params[:3])
    fedce = codec.decode_job(codec.encode_job(Job(1, ClientTask(0, params, 0, 0, 1, 0, FedCEDown(0.25)))), FedCEDown)
    assert fedce.task.down == FedCEDown(0.25)
    with pytest.raises(ValueError, match="declares no down_type"):  # a message the strategy does not expect
        codec.decode_job(codec.encode_job(job))
    with pytest.raises(ValueError, match="expected fields"):  # the fields of another message type
        codec.decode_job(codec.encode_job(job), FedCEDown)
    s = back.client_state
    assert set(s) == {"c", "t", 5} and np.array_equal(s["c"], np.arange(3.0)) and s["c"].dtype == np.float64
    assert s["t"][0] == 1 and s["t"][1] == np.float32(0.1) and type(s["t"][1]) is np.float32 and s["t"][2] == "x"
    assert s[5][:3] == [None, True, 1e-310] and np.isnan(s[5][3])
    up = ClientUpdate(2, params * 2, 11, 1, {"train_loss": 0.5}, ScaffoldUp(params))
    res = codec.decode_result(codec.encode_result(JobResult(3, 2, up, state, None, 0.01)), ScaffoldUp)
    assert np.array_equal(res.update.delta, params * 2) and res.update.num_examples == 11
    assert np.array_equal(res.update.up.delta_c, params) and res.update.metrics == {"train_loss": 0.5}
    model = ClientUpdate(2, params, 11, 1, kind="model")
    back_model = codec.decode_result(codec.encode_result(JobResult(3, 2, model, None))).update
    assert back_model.kind == "model" and np.array_equal(back_model.model, params)
    admm_state = AdmmClient(np.arange(3.0), np.ones(3), 4)  # a dataclass client state: its declared type
    job_back = codec.decode_job(codec.encode_job(Job(1, job.task, admm_state)), ScaffoldDown, AdmmClient)
    assert type(job_back.client_state) is AdmmClient and job_back.client_state.round == 4
    assert job_back.client_state.w.dtype == np.float64 and np.array_equal(job_back.client_state.w, np.arange(3.0))
    res_back = codec.decode_result(codec.encode_result(JobResult(3, 2, up, admm_state)), ScaffoldUp, AdmmClient)
    assert np.array_equal(res_back.client_state.z, np.ones(3))
    with pytest.raises(ValueError, match="declares no client_state_type"):
        codec.decode_result(codec.encode_result(JobResult(3, 2, up, admm_state)), ScaffoldUp)
    failed = codec.decode_result(codec.encode_result(JobResult(4, 1, None, None, "boom", 0.0)))
    assert failed.update is None and failed.error == "boom"
    with pytest.raises(TypeError, match="client_state"):
        codec.encode_job(Job(1, job.task, object()))


def test_stateful_client_state_changes_results(tmp_path, stateful):
    # Guard for the cross-executor test below: the state really matters to the metrics.
    run_raw(SYNC, tmp_path / "a")
    run_raw(merge(SYNC, strategy={"name": "fedavg"}), tmp_path / "b")
    assert read_metrics(tmp_path / "a") != read_metrics(tmp_path / "b")


# -- slow: Ray cluster and executors ----------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_using(marker: str) -> list[int]:
    """PIDs of live processes whose command line or open files mention `marker` (our
    cluster's temp dir). Ray's agents rename themselves (`ray::DashboardAgent`), so the
    command line alone misses them; their log files give them away."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie has exited already
            hit = marker in (d / "cmdline").read_bytes().decode(errors="replace")
            if not hit:
                hit = any(os.readlink(f).startswith(marker) for f in (d / "fd").iterdir())
        except OSError:
            continue
        if hit:
            pids.append(int(d.name))
    return pids


@pytest.fixture(scope="module")
def ray_cluster():
    """`ray start --head` on loopback with free ports and a private temp dir; yields its
    address; stops exactly the processes it started."""
    tmp = tempfile.mkdtemp(prefix="fsray", dir="/tmp")  # short: Ray puts unix sockets there
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    cmd = [str(RAY_BIN), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
           f"--temp-dir={tmp}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
           "--disable-usage-stats", f"--node-manager-port={_free_port()}",
           f"--object-manager-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
           f"--min-worker-port={_free_port()}", "--max-worker-port=0",
           f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
           f"--runtime-env-agent-port={_free_port()}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        _stop(tmp)
        pytest.fail(f"ray start failed: {proc.stderr[-2000:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop(tmp)


def _stop(marker: str) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = _pids_using(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + wait
        while _pids_using(marker) and time.monotonic() < end:
            time.sleep(0.2)
    assert not _pids_using(marker), "Ray processes of the test cluster survived"
    shutil.rmtree(marker, ignore_errors=True)


def _rows(out: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (out / name).read_text().splitlines() if x]


def _same_run(a: Path, b: Path) -> None:
    assert read_metrics(a) == read_metrics(b)
    assert _rows(a, "clients.jsonl") == _rows(b, "clients.jsonl")
    assert _rows(a, "events.jsonl") == _rows(b, "events.jsonl")


@pytest.mark.slow
def test_sync_identical_on_inline_ray_and_flower(tmp_path, stateful, ray_cluster):
    run_raw(SYNC, tmp_path / "inline")
    # warmup_inline off: every job runs on an actor; on: the driver takes jobs until they are up
    run_raw(merge(SYNC, executor={"name": "ray", "address": ray_cluster, "warmup_inline": False}), tmp_path / "ray")
    run_raw(merge(SYNC, executor={"name": "ray", "address": ray_cluster}), tmp_path / "ray_warm")
    run_raw(merge(SYNC, executor={"name": "flower", "address": ray_cluster}), tmp_path / "flower")
    _same_run(tmp_path / "inline", tmp_path / "ray")
    _same_run(tmp_path / "inline", tmp_path / "ray_warm")
    _same_run(tmp_path / "inline", tmp_path / "flower")
    assert read_metrics(tmp_path / "inline")[-1]["num_updates"] == 16


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["scaffold", "fedce", "admm"])
def test_typed_messages_identical_on_inline_ray_and_flower(tmp_path, ray_cluster, strategy):
    # SCAFFOLD's c / Δc and FedCE's coefficient / score travel as typed messages through the
    # Flower codec; ADMM's updates carry models; FedCE's and ADMM's client states are dataclasses.
    raw = merge(SYNC, strategy={"name": strategy})
    run_raw(raw, tmp_path / "inline")
    run_raw(merge(raw, executor={"name": "ray", "address": ray_cluster, "warmup_inline": False}), tmp_path / "ray")
    run_raw(merge(raw, executor={"name": "flower", "address": ray_cluster}), tmp_path / "flower")
    _same_run(tmp_path / "inline", tmp_path / "ray")
    _same_run(tmp_path / "inline", tmp_path / "flower")
    assert read_metrics(tmp_path / "inline")[-1]["num_failed"] == 0


@pytest.mark.slow
def test_async_identical_on_inline_ray_and_flower(tmp_path, ray_cluster):
    # Jobs overlap and come back in any order; the engine commits them in virtual time.
    run_raw(ASYNC, tmp_path / "inline")
    run_raw(merge(ASYNC, executor={"name": "ray", "address": ray_cluster, "warmup_inline": False}), tmp_path / "ray")
    run_raw(merge(ASYNC, executor={"name": "flower", "address": ray_cluster}), tmp_path / "flower")
    _same_run(tmp_path / "inline", tmp_path / "ray")
    _same_run(tmp_path / "inline", tmp_path / "flower")
    assert read_metrics(tmp_path / "inline")[-1]["version"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["ray", "flower"])
def test_client_exception_is_a_recorded_drop(tmp_path, stateful, ray_cluster, executor):
    raw = merge(SYNC, strategy={"name": "stateful", "fail": 1}, participation={"name": "full"},
                engine={"rounds": 2, "on_client_error": "drop"}, executor={"name": executor, "address": ray_cluster})
    if executor == "ray":
        raw["executor"]["warmup_inline"] = False  # the failure must cross the actor boundary
    run_raw(raw, tmp_path)
    last = read_metrics(tmp_path)[-1]
    assert last["round"] == 2 and last["num_failed"] == 2 and last["num_updates"] == 10
    drops = [e for e in _rows(tmp_path, "events.jsonl") if e["kind"] == "drop"]
    assert [d["client"] for d in drops] == [1, 1]
    assert all("broken on purpose" in d["reason"] for d in drops)


@pytest.mark.slow
def test_ray_local_cluster_cli_starts_and_stops(tmp_path):
    # No address: the executor starts a private local cluster and shuts it down at close.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    scenario = tmp_path / "s.yaml"
    import yaml

    # warmup_inline off: the actors (Ray worker processes) run every job, so they exist.
    ray_cfg = {"name": "ray", "actors": 2, "warmup_inline": False}
    scenario.write_text(yaml.safe_dump(merge(TINY, executor=ray_cfg, engine={"rounds": 2})))
    marker = f"fedsim-test-{os.getpid()}-{time.time_ns()}"
    env["FEDSIM_TEST_MARKER"] = marker  # inherited by every process Ray starts for this run
    proc = subprocess.run([sys.executable, "-m", "fedsim", "run", str(scenario), "--quiet", "--out",
                           str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""  # Ray is silent by default
    assert read_metrics(tmp_path / "out")[-1]["round"] == 2
    left = _processes_with(marker)
    for _ in range(20):  # SIGKILLed helpers and reaped workers can take a moment to vanish
        if not left:
            break
        time.sleep(0.25)
        left = _processes_with(marker)
    assert left == [], f"processes left behind by the run: {left}"


@pytest.mark.slow
def test_private_local_cluster_starts_lean(monkeypatch):
    # The executor's own local cluster runs GCS and raylet (and workers) only: no autoscaler
    # monitor, log monitor or dashboard server. Fails loudly if a Ray upgrade breaks that.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("FEDSIM_VERBOSE", raising=False)
    import ray

    from fedsim.executors.ray_executor import Ray, _skip_helper

    ex = Ray(actors=1).create()
    try:
        assert ex._booted.wait(300) and ex._boot_error is None
        started = set(ray._private.worker._global_node.all_processes)
    finally:
        ex.close()
    assert started == {"gcs_server", "raylet"}, started
    assert not ray.is_initialized()
    node_cls = ray._private.node.Node
    assert all(getattr(node_cls, m) is not _skip_helper
               for m in ("start_monitor", "start_log_monitor", "start_api_server"))


def _processes_with(marker: str) -> list[str]:
    """Live processes whose environment carries `marker` (zombies excluded)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if marker.encode() not in Path(f"/proc/{pid}/environ").read_bytes():
                continue
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                found.append(f"{pid} {Path(f'/proc/{pid}/cmdline').read_bytes()[:80]!r}")
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["ray", "flower"])
def test_backend_that_cannot_start_is_one_line(tmp_path, executor):
    # More GPUs per client than any machine has: the run stops with one line, no hang.
    from fedsim.errors import RunError

    with pytest.raises(RunError) as err:
        run_raw(merge(TINY, executor={"name": executor, "num_gpus": 64}), tmp_path)
    assert "\n" not in str(err.value) and "GPU" in str(err.value)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_inline_worker_failure_outside_a_job_is_loud_not_a_hang(tmp_path, monkeypatch, workers):
    """A runtime that cannot even be built (here: its constructor raises) must stop the run with
    one line on every inline setting; with workers >= 1 it used to leave the engine waiting on
    a result that never came."""
    from fedsim.errors import RunError
    from fedsim.training import runtime

    def broken(*args, **kwargs):
        raise MemoryError("cannot allocate the client model")

    monkeypatch.setattr(runtime, "ClientRuntime", broken)
    raw = merge(TINY, engine={"rounds": 2}, executor={"name": "inline", "workers": workers})
    t0 = time.perf_counter()
    with pytest.raises(RunError, match="worker failed outside any client job: MemoryError: cannot allocate"):
        run_raw(raw, tmp_path / "run")
    assert time.perf_counter() - t0 < 60
