"""End to end on loopback: `fedsim deploy server` + 3 `fedsim deploy client` processes,
TLS and node authentication on, free ports on 127.0.0.1.

Every command runs as its own process (as a user would start them); the fixture stops
each by its PID (SIGTERM: the CLI then stops the SuperLink / SuperNode it started), and
checks that nothing they started is left running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY, merge, read_metrics

from fedsim.flower import deploy as d
from fedsim.flower.certs import make_credentials

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]

SCENARIO = merge(TINY, name="deploy-e2e", seed=3, engine={"rounds": 3},
                 data={"dataset": {"name": "gaussian_mixture", "num_samples": 600, "num_test": 300, "dim": 5},
                       "partition": {"name": "dirichlet", "alpha": 1.0}, "num_clients": 3})


class Cluster:
    """The processes of one deployment, each stopped by its PID."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.children: list[int] = []  # SuperLink / SuperNode PIDs the CLIs reported

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.tmp / f"{name}.out"
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        p = subprocess.Popen([sys.executable, "-m", "fedsim", *args], cwd=self.tmp, env=env,
                             stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, p, log))
        return p

    def text(self, name: str) -> str:
        return (self.tmp / f"{name}.out").read_text(errors="replace")

    def wait_for(self, name: str, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text(name))
            if m:
                return m
            proc = next(p for n, p, _ in self.procs if n == name)
            if proc.poll() is not None:
                break
            time.sleep(0.3)
        raise AssertionError(f"{name}: no {pattern!r} within {timeout:g} s:\n{self.text(name)[-3000:]}")

    def stop(self) -> None:
        for _name, p, _ in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _name, p, _ in self.procs:
            try:
                p.wait(40)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for pid in self.children:  # normally already gone: the CLIs stopped them on SIGTERM
            d.Proc(f"pid {pid}", _Reaped(pid), Path(os.devnull)).stop(grace=10)

    def assert_clean(self) -> None:
        for name, p, _ in self.procs:
            assert not d._group_alive(p.pid), f"{name} left processes behind"
        for pid in self.children:
            assert not d._group_alive(pid), f"pid {pid}'s processes are still running"


class _Reaped:
    """Minimal Popen stand-in for a PID we did not start directly (it belongs to a CLI child)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode = None

    def poll(self):
        try:
            os.kill(self.pid, 0)
            return None
        except ProcessLookupError:
            return 0

    def send_signal(self, sig):
        os.kill(self.pid, sig)

    def kill(self):
        os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout=None):
        deadline = time.monotonic() + (timeout or 0)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("pid", timeout)
            time.sleep(0.1)
        return 0


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()
    c.assert_clean()


def deploy(cluster: Cluster, scenario: dict, faults: dict[int, str] | None = None, client_timeout: float = 300,
           rogue: bool = False):
    """Run `scenario` through the CLI with one client process per fedsim client."""
    tmp = cluster.tmp
    n = scenario["data"]["num_clients"]
    creds = make_credentials(tmp / "creds", clients=n + 1)  # the last key is never registered
    (tmp / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    fleet = f"127.0.0.1:{d.free_port()}"
    pubs = [str(creds.public_key(k)) for k in range(n)]
    cluster.start("server", "deploy", "server", "scenario.yaml", "--tls-dir", "creds", "--client-keys", *pubs,
                  "--fleet-address", fleet, "--out", "out", "--client-timeout", str(client_timeout),
                  "--wait-clients", "300", "--run-timeout", "900")
    m = cluster.wait_for("server", r"SuperLink up \(pid (\d+)\)", 120)
    cluster.children.append(int(m.group(1)))
    cluster.wait_for("server", r"waiting for \d+ clients", 120)  # keys registered
    for k in range(n):
        extra = ["--fault", faults[k]] if faults and k in faults else []
        cluster.start(f"client{k}", "deploy", "client", "--server", fleet, "--client-id", str(k),
                      "--ca", "creds/ca.crt", "--key", f"creds/client_{k}", "--home", f"client{k}", *extra)
        m = cluster.wait_for(f"client{k}", r"SuperNode pid (\d+)", 60)
        cluster.children.append(int(m.group(1)))
    if rogue:  # same client id, a key the server never registered: refused while the run goes on
        cluster.start("rogue", "deploy", "client", "--server", fleet, "--client-id", "0", "--ca", "creds/ca.crt",
                      "--key", f"creds/client_{n}", "--home", "rogue")
        m = cluster.wait_for("rogue", r"SuperNode pid (\d+)", 60)
        cluster.children.append(int(m.group(1)))
        proc = next(p for name, p, _ in cluster.procs if name == "rogue")
        assert proc.wait(120) != 0
        assert "Failed to activate SuperNode" in cluster.text("rogue")
    cluster.wait_for("server", r"(?m)^results: ", 900)
    server = next(p for name, p, _ in cluster.procs if name == "server")
    assert server.wait(60) == 0, cluster.text("server")[-3000:]
    return tmp / "out", creds, fleet


def events(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines() if x]


def test_fedavg_deployed_equals_flower_simulation(cluster):
    out, creds, fleet = deploy(cluster, SCENARIO)
    deployed = read_metrics(out)
    assert [r["round"] for r in deployed] == [0, 1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["executor"] == "deploy"
    assert summary["deploy"]["tls"] and summary["deploy"]["node_auth"] and summary["deploy"]["transport"] == "grpc-rere"
    final = summary["final"]
    assert final["num_updates"] == 9 and final["num_failed"] == 0
    assert final["test_accuracy"] > deployed[0]["test_accuracy"] + 0.2  # it learned
    print(f"deployed FedAvg final test_accuracy={final['test_accuracy']:.4f}")
    # the SuperLink said it served the Fleet API over gRPC, and the clients used it
    sl_log = (out / "deploy" / "superlink.log").read_text()
    assert f"Starting Fleet API (gRPC-rere) on {fleet}" in sl_log
    # node authentication: the nodes that joined are exactly the registered keys
    registered = set(re.findall(r"registered client_\d+\.pub \(node (\d+)\)", cluster.text("server")))
    assert len(registered) == 3
    assert set(re.findall(r"Activated node_id=(\d+)", sl_log)) == registered
    # same scenario, same seed, on Flower's simulation engine: identical metrics
    sim = cluster.tmp / "sim"
    res = subprocess.run([sys.executable, "-m", "fedsim", "run", "scenario.yaml", "executor.name=flower",
                          "--out", str(sim), "--quiet"], cwd=cluster.tmp, capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_metrics(sim) == deployed
    assert (sim / "clients.jsonl").read_text() == (out / "clients.jsonl").read_text()
    assert events(sim) == events(out)


JOB_TIMEOUT = 30


def test_unregistered_client_refused_and_faulty_client_excluded(cluster):
    sc = dict(SCENARIO, engine={"mode": "sync", "rounds": 2})
    # client 1 always sends a delta of the wrong shape; client 2 hangs in round 2 (index 1)
    # The hung job is given up after JOB_TIMEOUT: long enough for a healthy digits job on a busy
    # 2-core machine (well under a second of training), short enough not to dominate the test.
    out, creds, fleet = deploy(cluster, sc, faults={1: "shape", 2: "hang@1"}, client_timeout=JOB_TIMEOUT, rogue=True)
    assert "No SuperNode found with the given public key" in (out / "deploy" / "superlink.log").read_text()
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [0, 1, 2]
    drops = [e for e in events(out) if e["kind"] == "drop"]
    reasons = {(e["client"], e["job"]): e["reason"] for e in drops}
    assert sum(1 for e in drops if e["client"] == 1) == 2
    assert all("wrong shape" in r for (c, _), r in reasons.items() if c == 1)
    assert [r for (c, _), r in reasons.items() if c == 2] == [f"client error: no reply within {JOB_TIMEOUT} s"]
    assert rows[-1]["num_updates"] == 3 and rows[-1]["num_failed"] == 3
    # the global model is intact and still learned from the healthy updates
    import torch

    params = torch.load(out / "model.pt")["params"].numpy()
    assert np.all(np.isfinite(params))
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]


def test_fedbuff_deployed_on_the_wall_clock(cluster):
    """A short async FedBuff run deployed (3 TLS + node-auth clients): `fedsim deploy server`
    runs it on the wall clock, so updates are committed in the order the clients really
    returned them and events.jsonl holds real seconds since the start (not the simulation's
    virtual times, so it is not compared with a simulated run)."""
    sc = dict(SCENARIO, name="deploy-fedbuff", engine={"mode": "async", "concurrency": 3, "max_versions": 4},
              strategy={"name": "fedbuff", "buffer_size": 2})
    out, creds, fleet = deploy(cluster, sc)
    resolved = yaml.safe_load((out / "scenario.resolved.yaml").read_text())
    assert resolved["engine"]["clock"] == "wall"
    deployed = read_metrics(out)
    assert [r["version"] for r in deployed] == [0, 1, 2, 3, 4]
    final = deployed[-1]
    assert final["num_failed"] == 0 and final["test_accuracy"] > deployed[0]["test_accuracy"] + 0.2
    print(f"deployed FedBuff (wall clock) final test_accuracy={final['test_accuracy']:.4f}")
    evs = events(out)
    commits = [e for e in evs if e["kind"] == "commit"]
    arrivals = [e for e in evs if e["kind"] == "arrive"]
    assert [e["version"] for e in commits] == [1, 2, 3, 4]
    assert all(e["num_updates"] == 2 for e in commits)  # K = 2 arrivals per version
    assert len(arrivals) == 8 and not [e for e in evs if e["kind"] == "finish"]
    times = [e["virtual_time"] for e in evs]
    assert times == sorted(times) and times[-1] > 0.0  # real seconds since the run started
    # metrics' clock is the same wall clock: each evaluation is stamped at (or after) its commit
    assert [r["virtual_time"] for r in deployed[1:]] == [e["virtual_time"] for e in commits]
    # the same scenario simulated (virtual clock) has the system model's arrival times, not these
    sim = cluster.tmp / "sim"
    res = subprocess.run([sys.executable, "-m", "fedsim", "run", "scenario.yaml", "--out", str(sim), "--quiet"],
                         cwd=cluster.tmp, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr[-3000:]
    simulated = [e["virtual_time"] for e in events(sim) if e["kind"] == "arrive"]
    assert simulated and simulated != [e["virtual_time"] for e in arrivals]
