"""End to end on loopback: a user's own Flower ClientApp (Flower's API only) joins `fedsim deploy server`.

`fedsim deploy server --client-app` runs as its own process; the SuperNodes are stock
`flower-supernode` processes whose PYTHONPATH holds a `fedsim` package that refuses to be
imported, so the ClientApp provably runs without fedsim. Insecure (no TLS) on 127.0.0.1
only; every process is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, merge, read_metrics

from fedsim.flower import deploy as d

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]

# The quickstart-pytorch ClientApp's shape (Message API), its data swapped for local tensors.
STOCK_APP = textwrap.dedent('''
    """A stock Flower ClientApp: Flower and torch only."""
    import torch
    from torch import nn
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()


    def Net():
        return nn.Sequential(nn.Flatten(), nn.Linear(5, 4))


    def load_data(partition_id):
        g = torch.Generator().manual_seed(100 + partition_id)
        y = torch.randint(0, 4, (64,), generator=g)
        x = torch.nn.functional.one_hot(y, 5).float() * 3 + torch.randn(64, 5, generator=g)
        return x, y


    @app.train()
    def train(msg: Message, context: Context):
        mode = context.node_config.get("mode", "")
        if mode == "raise":
            raise RuntimeError("cannot open the local dataset")
        if mode == "garbage":
            return Message(RecordDict({"metrics": MetricRecord({"accuracy": 0.5})}), reply_to=msg)
        model = Net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = load_data(int(context.node_config["partition-id"]))
        opt = torch.optim.SGD(model.parameters(), lr=msg.content["config"]["lr"])
        bs = int(context.run_config["batch-size"])
        for _ in range(int(context.run_config["local-epochs"])):
            for i in range(0, len(x), bs):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x[i:i + bs]), y[i:i + bs])
                loss.backward()
                opt.step()
        metrics = MetricRecord({"train_loss": float(loss), "num-examples": len(x)})
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)
''')

# A NumPyClient app in the style of Flower's classic quickstart (client_fn + NumPyClient.fit).
NUMPY_APP = textwrap.dedent('''
    """A stock Flower NumPyClient app: Flower, numpy and torch only."""
    import torch
    from torch import nn
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context


    class Net(nn.Module):
        """Named layers, as in Flower's quickstart: the server runs this class (model: torch_module)."""

        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(5, 8)
            self.fc2 = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))


    class Client(NumPyClient):
        def __init__(self, partition_id):
            g = torch.Generator().manual_seed(200 + partition_id)
            self.y = torch.randint(0, 4, (48,), generator=g)
            self.x = torch.nn.functional.one_hot(self.y, 5).float() * 3 + torch.randn(48, 5, generator=g)
            self.model = Net()

        def fit(self, parameters, config):
            keys = list(self.model.state_dict().keys())
            self.model.load_state_dict({k: torch.tensor(v) for k, v in zip(keys, parameters)})
            opt = torch.optim.SGD(self.model.parameters(), lr=float(config["lr"]))
            for i in range(0, len(self.x), 16):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(self.model(self.x[i:i + 16]), self.y[i:i + 16])
                loss.backward()
                opt.step()
            weights = [v.detach().numpy() for v in self.model.state_dict().values()]
            return weights, len(self.x), {"train_loss": float(loss)}


    def client_fn(context: Context):
        return Client(int(context.node_config["partition-id"])).to_client()


    app = ClientApp(client_fn=client_fn)
''')

# the scenario's model (`logreg`: Flatten + Linear(5, 4)) is the app's Net: same state_dict keys
SCENARIO = merge(TINY, name="own-clientapp", seed=1, engine={"rounds": 2},
                 data={"dataset": {"name": "gaussian_mixture", "num_samples": 300, "num_test": 200, "dim": 5,
                                   "num_classes": 4}, "num_clients": 2},
                 client={"local_epochs": 1, "batch_size": 16, "lr": 0.1})


def write_project(tmp: Path, source: str = STOCK_APP) -> Path:
    app = tmp / "userapp"
    (app / "stockapp").mkdir(parents=True)
    (app / "stockapp" / "__init__.py").write_text("")
    (app / "stockapp" / "client_app.py").write_text(source)
    (app / "pyproject.toml").write_text('[project]\nname = "stockapp"\nversion = "1.0.0"\n\n'
                                        '[tool.flwr.app.config]\nlocal-epochs = 1\nbatch-size = 32\n')
    assert "fedsim" not in source
    return app


def no_fedsim(tmp: Path) -> Path:
    """A PYTHONPATH folder whose `fedsim` package cannot be imported (found before the installed one)."""
    block = tmp / "nofedsim" / "fedsim"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'fedsim\'", name="fedsim")\n')
    return block.parent


class Deployment:
    def __init__(self, tmp: Path):
        self.tmp, self.server, self.nodes = tmp, None, []
        self.fleet = f"127.0.0.1:{d.free_port()}"

    def start_server(self, scenario: dict, *extra: str, pythonpath: tuple[str, ...] = ()) -> None:
        (self.tmp / "scenario.yaml").write_text(yaml.safe_dump(scenario))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(ROOT), *pythonpath)), PYTHONUNBUFFERED="1")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "fedsim", "deploy", "server", "scenario.yaml", "--insecure", "--fleet-address",
             self.fleet, "--out", "out", "--client-timeout", "120", "--wait-clients", "120", "--run-timeout", "600",
             *extra], cwd=self.tmp, env=env, stdout=open(self.tmp / "server.out", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.wait_for(r"waiting for \d+ clients", 120)

    def text(self) -> str:
        return (self.tmp / "server.out").read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text()):
                return
            if self.server.poll() is not None:
                break
            time.sleep(0.3)
        raise AssertionError(f"server: no {pattern!r} within {timeout:g} s:\n{self.text()[-3000:]}")

    def node(self, k: int, config: dict, blocked: bool = True) -> None:
        env = {"PYTHONPATH": str(no_fedsim(self.tmp / f"n{k}"))} if blocked else None
        self.nodes.append(d.start_supernode(self.tmp / f"node{k}", self.fleet, config, ca=None, private_key=None,
                                            name=f"node {k}", env=env))

    def finish(self) -> Path:
        self.wait_for(r"(?m)^results: ", 600)
        assert self.server.wait(60) == 0, self.text()[-3000:]
        return self.tmp / "out"

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(40)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(10)
        for n in self.nodes:
            n.stop()
        if self.server is not None:
            assert not d._group_alive(self.server.pid)
        for n in self.nodes:
            assert not d._group_alive(n.pid)


@pytest.fixture
def deployment(tmp_path):
    dep = Deployment(tmp_path)
    try:
        yield dep
    finally:
        dep.stop()


def events(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines() if x]


def initial_params(out: Path):
    from fedsim.runner import build_data, build_model
    from fedsim.scenario.loading import load

    sc = load(str(out / "scenario.resolved.yaml"), [])
    return build_model(sc, build_data(sc))[0]


def test_stock_clientapp_without_fedsim_trains_the_servers_model(deployment):
    app = write_project(deployment.tmp)
    deployment.start_server(SCENARIO, "--client-app", "stockapp.client_app:app", "--app-dir", str(app))
    for k in range(2):
        deployment.node(k, {"partition-id": k, "num-partitions": 2})
    out = deployment.finish()
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[-1]["num_updates"] == 4 and rows[-1]["num_failed"] == 0
    assert all(r["train_loss"] > 0 for r in rows[1:])  # the app's MetricRecord reached metrics.jsonl
    final = torch.load(out / "model.pt")["params"].numpy()
    assert abs(final - initial_params(out)).max() > 1e-3  # the nodes' training changed the model
    # no drops: the nodes, where importing fedsim fails (`no_fedsim`), answered every job
    assert not [e for e in events(out) if e["kind"] in ("drop", "exclude")]


def test_stock_numpyclient_app_without_fedsim_trains_the_servers_model(deployment, monkeypatch):
    app = write_project(deployment.tmp, NUMPY_APP)
    monkeypatch.syspath_prepend(str(app))  # this test rebuilds the initial model from the app's Net too
    # the server's model is the app's own Net class, imported from the user's project folder
    scenario = merge(SCENARIO, model={"name": "torch_module", "module": "stockapp.client_app:Net", "device": "cpu"})
    deployment.start_server(scenario, "--client-app", "stockapp.client_app:app", "--app-dir", str(app),
                            "--client-api", "numpy", pythonpath=(str(app),))
    for k in range(2):
        deployment.node(k, {"partition-id": k, "num-partitions": 2})
    out = deployment.finish()
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[-1]["num_updates"] == 4 and rows[-1]["num_failed"] == 0
    assert all(r["train_loss"] > 0 for r in rows[1:])
    final = torch.load(out / "model.pt")["params"].numpy()
    assert final.size == 5 * 8 + 8 + 8 * 4 + 4  # the app's Net, not a fedsim model
    assert abs(final - initial_params(out)).max() > 1e-3
    assert not [e for e in events(out) if e["kind"] in ("drop", "exclude")]


def test_failing_and_garbage_nodes_are_excluded_and_the_run_goes_on(deployment):
    app = write_project(deployment.tmp)
    sc = merge(SCENARIO, data={"num_clients": 3})
    deployment.start_server(sc, "--client-app", "stockapp.client_app:app", "--app-dir", str(app))
    for k, mode in enumerate(["", "raise", "garbage"]):
        deployment.node(k, {"partition-id": k, "num-partitions": 3, "mode": mode})
    out = deployment.finish()
    text = deployment.text()
    excluded = re.findall(r"(?m)^node \d+ excluded: (.*)$", text)
    assert len(excluded) == 2, text[-3000:]
    assert any(x.startswith("setup failed: ") and "cannot open the local dataset" in x for x in excluded)
    assert any(x.startswith("answers in an unknown format: ") for x in excluded)
    exc = [e for e in events(out) if e["kind"] == "exclude"]
    assert len(exc) == 2 and sorted(len(e["clients"]) for e in exc) == [1, 1]
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [0, 1, 2]
    # round 1: one good update, two failed; round 2: only the good node's client is asked
    assert rows[1]["num_updates"] == 1 and rows[-1]["num_updates"] == 2 and rows[-1]["num_failed"] == 2


def test_node_without_fedsim_running_fedsims_clientapp_is_excluded(deployment):
    """The issue's failure: fedsim's own ClientApp on a node without fedsim ends no run now."""
    deployment.start_server(SCENARIO)
    deployment.node(0, {"partition-id": 0, "fedsim-data": ""}, blocked=False)
    deployment.node(1, {"partition-id": 1, "fedsim-data": ""})
    out = deployment.finish()
    line = re.findall(r"(?m)^node \d+ excluded: .*$", deployment.text())
    assert len(line) == 1 and "setup failed: " in line[0] and "No module named 'fedsim'" in line[0], line
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[-1]["num_updates"] == 2
