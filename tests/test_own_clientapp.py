"""A user's own Flower ClientApp: the standard message contents and node exclusion (no processes).

The codec tests build replies with Flower's own records (and, for NumPyClient, Flower's own
compat functions); the executor tests drive `GridExecutor` through a stand-in Grid whose
nodes answer from plain functions.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import TINY, merge
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsim.flower import grid, standard
from fedsim.flower.grid import Excluding, GridExecutor, NoNodesLeft
from fedsim.flower.standard import Layout, UnknownFormat
from fedsim.scenario.loading import from_mapping
from fedsim.training.models import LogReg
from fedsim.types import ClientTask, Job

LAYOUT = Layout(("1.weight", "1.bias"), ((3, 5), (3,)))  # logreg on 5 features, 3 classes


def job(client=0, params=None, rnd=2, lr_step=None):
    p = np.arange(18, dtype=np.float32) if params is None else params
    return Job(7, ClientTask(client, p, 4, rnd, 7, 11, None, lr_step))


def reply(arrays: dict, metrics: dict) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                       "metrics": MetricRecord(metrics)})


def test_layout_is_the_models_state_dict_in_flat_order():
    assert standard.layout_of(LogReg(device="cpu"), (5,), 3) == LAYOUT
    arrays = LAYOUT.arrays(np.arange(18, dtype=np.float32))
    assert list(arrays) == ["1.weight", "1.bias"]
    np.testing.assert_array_equal(arrays["1.weight"], np.arange(15, dtype=np.float32).reshape(3, 5))
    np.testing.assert_array_equal(arrays["1.bias"], [15.0, 16.0, 17.0])


def test_a_model_with_buffers_is_refused():
    class WithNorm:
        def build(self, input_shape, num_classes):
            from torch import nn

            return nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3))

    with pytest.raises(ValueError, match=r"the model has buffers \(1.running_mean, 1.running_var, "):
        standard.layout_of(WithNorm(), (5,), 3)


def test_message_api_train_content_and_config_keys():
    cfg = SimpleNamespace(lr=0.5, lr_decay=0.5, local_epochs=None, local_steps=10, batch_size=16)
    config = standard.train_config(job(rnd=2), cfg)
    assert config == {"lr": 0.125, "server-round": 3, "local-steps": 10, "batch-size": 16}  # 0.5 · 0.5²
    assert standard.train_config(job(rnd=2, lr_step=1), SimpleNamespace(**{**vars(cfg), "local_epochs": 2})) == {
        "lr": 0.25, "server-round": 3, "local-steps": 10, "batch-size": 16, "local-epochs": 2}
    content = standard.encode_train(job(), LAYOUT, config)
    assert set(content.keys()) == {"arrays", "config"}
    sd = content["arrays"].to_torch_state_dict()  # what the quickstart's load_state_dict receives
    assert list(sd) == ["1.weight", "1.bias"]
    np.testing.assert_array_equal(sd["1.bias"].numpy(), [15.0, 16.0, 17.0])
    assert dict(content["config"]) == config


def test_message_api_reply_becomes_a_delta_or_a_model():
    sent = job()
    back = {"1.weight": np.arange(15, dtype=np.float32).reshape(3, 5) + 0.5, "1.bias": np.array([15.0, 16, 17]) - 1}
    content = reply(back, {"train_loss": 1.25, "num-examples": 40})
    u = standard.decode_train(content, sent, LAYOUT, "delta")
    np.testing.assert_array_equal(u.delta, np.r_[np.full(15, 0.5), np.full(3, -1.0)].astype(np.float32))
    assert (u.client, u.num_examples, u.base_version, dict(u.metrics), u.up) == (0, 40, 4, {"train_loss": 1.25}, None)
    m = standard.decode_train(content, sent, LAYOUT, "model")
    np.testing.assert_array_equal(m.model, np.r_[np.arange(15) + 0.5, [14.0, 15.0, 16.0]].astype(np.float32))


def test_numpy_client_format_round_trips_through_flowers_compat_layer():
    from flwr.common import FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.typing import Code
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins

    content = standard.encode_train(job(), LAYOUT, {"lr": 0.1, "server-round": 3}, api="numpy")
    ins = recorddict_to_fitins(content, keep_input=True)  # what a NumPyClient's fit() is given
    got = parameters_to_ndarrays(ins.parameters)
    np.testing.assert_array_equal(got[0], np.arange(15, dtype=np.float32).reshape(3, 5))
    assert dict(ins.config) == {"lr": 0.1, "server-round": 3}
    trained = [got[0] * 2, got[1] * 2]
    res = fitres_to_recorddict(FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(trained), 25,
                                      {"train_loss": 0.75}), keep_input=False)
    u = standard.decode_train(res, job(), LAYOUT, "delta", api="numpy")
    np.testing.assert_array_equal(u.delta, np.arange(18, dtype=np.float32))  # 2x − x
    assert (u.num_examples, dict(u.metrics)) == (25, {"train_loss": 0.75})
    failed = fitres_to_recorddict(FitRes(Status(Code.FIT_NOT_IMPLEMENTED, "no fit"), ndarrays_to_parameters([]),
                                         0, {}), keep_input=False)
    with pytest.raises(UnknownFormat, match="^fit failed on the client: no fit$"):
        standard.decode_train(failed, job(), LAYOUT, api="numpy")


GOOD = {"1.weight": np.zeros((3, 5), np.float32), "1.bias": np.zeros(3, np.float32)}


@pytest.mark.parametrize("content, reason", [
    (reply(GOOD, {"train_loss": 1.0}), "the MetricRecord has no 'num-examples'"),
    (reply(GOOD, {"num-examples": 2.5}), "num-examples must be a non-negative integer, got 2.5"),
    (reply({"1.weight": GOOD["1.weight"], "w": GOOD["1.bias"]}, {"num-examples": 3}),
     "the arrays are not the model's state_dict (missing ['1.bias'], unexpected ['w'])"),
    (reply({**GOOD, "1.bias": np.zeros(4, np.float32)}, {"num-examples": 3}),
     "array '1.bias' has shape (4,), the model's '1.bias' has (3,)"),
    (reply({**GOOD, "1.bias": np.zeros(3, np.int64)}, {"num-examples": 3}),
     "array '1.bias' has dtype int64, expected floats"),
    (RecordDict({"fedsim.meta": ConfigRecord({"x": 1})}),
     "expected one ArrayRecord and one MetricRecord, got 0 and 0 (keys: fedsim.meta)"),
])
def test_malformed_replies_give_one_line_reasons(content, reason):
    with pytest.raises(UnknownFormat) as e:
        standard.decode_train(content, job(), LAYOUT)
    assert str(e.value) == reason


def test_only_plain_local_training_strategies_run_on_stock_clients():
    standard.check_strategy(from_mapping(TINY).strategy)  # fedavg: fine
    sc = from_mapping(merge(TINY, strategy={"name": "scaffold"}))
    with pytest.raises(ValueError, match=r"^strategy \w+ needs a client rule \(client_update\)"):
        standard.check_strategy(sc.strategy)


# -- GridExecutor with a stand-in Grid ----------------------------------------------------

class Msg:
    """Stand-in for flwr's Message (which needs a running ServerApp to be built)."""

    def __init__(self, content, dst_node_id, message_type, group_id=""):
        self.content, self.dst, self.type = content, dst_node_id, message_type


class Reply:
    def __init__(self, mid, node, content=None, error=None):
        self.metadata = SimpleNamespace(reply_to_message_id=mid, src_node_id=node)
        self.content, self.error = content, None if error is None else SimpleNamespace(reason=error)

    def has_error(self):
        return self.error is not None


class FakeGrid:
    """Nodes answer from `handlers[node](message)` -> RecordDict, or a string = an error reply."""

    def __init__(self, handlers):
        self.handlers, self.queue, self.sent = handlers, {}, []

    def get_node_ids(self):
        return list(self.handlers)

    def push_messages(self, msgs):
        ids = []
        for m in msgs:
            mid = f"m{len(self.sent)}"
            self.sent.append(m)
            out = self.handlers[m.dst](m)
            self.queue[mid] = Reply(mid, m.dst, error=out) if isinstance(out, str) else Reply(mid, m.dst, out)
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        return [self.queue.pop(i) for i in list(ids) if i in self.queue]


class FakeEngine:
    def __init__(self, n):
        self.n, self.now, self.version, self.events = n, 1.5, 2, []
        self.participation = SimpleNamespace(online=lambda step, t: np.ones(n, dtype=bool), probs=None)

    def event(self, kind, **fields):
        self.events.append({"kind": kind, **fields})


def query_ok(pid):
    return lambda m: RecordDict({"config": ConfigRecord({"partition-id": pid, "num-partitions": 3, "error": ""})})


def test_a_node_that_fails_the_setup_query_is_excluded_and_gets_no_jobs(monkeypatch):
    monkeypatch.setattr(grid, "Message", Msg)
    lines = []
    g = FakeGrid({11: query_ok(0), 22: lambda m: "ModuleNotFoundError: No module named 'fedsim'", 33: query_ok(2)})
    ex = GridExecutor(g, {}, 3, poll=0.0, log=lines.append)
    ex.start()
    assert lines == ["node 22 excluded: setup failed: ModuleNotFoundError: No module named 'fedsim'"]
    assert ex.nodes == [11, None, 33]  # slot 1's node failed: clients 1 and 4 have none
    eng = FakeEngine(6)
    process = ex.bind_engine(eng)
    assert eng.events == [{"kind": "exclude", "virtual_time": 1.5, "version": 2, "client": None, "node": 22,
                           "reason": "setup failed: ModuleNotFoundError: No module named 'fedsim'", "clients": []}]
    assert process.online(0, 0.0).tolist() == [True, False, True, True, False, True]
    assert process.probs is None  # other attributes pass through
    sent = len(g.sent)
    ex.submit([job(client=1)])  # a job for a client without a node is failed without a message
    assert len(g.sent) == sent and ex.next_result().error == "its node failed setup"


def test_every_node_failing_setup_stops_with_one_line(monkeypatch):
    monkeypatch.setattr(grid, "Message", Msg)
    g = FakeGrid({5: lambda m: "boom", 6: lambda m: RecordDict({"config": ConfigRecord({"x": 1})})})
    ex = GridExecutor(g, {}, 2, poll=0.0, log=lambda s: None)
    with pytest.raises(NoNodesLeft) as e:
        ex.start()
    assert str(e.value) == ("every Flower node failed setup: node 5: setup failed: boom; node 6: answers in an "
                            "unknown format: setup reply (KeyError: 'partition-id')")
    with pytest.raises(NoNodesLeft, match="^every Flower node was excluded"):
        Excluding(SimpleNamespace(online=lambda s, t: np.ones(2, bool)), np.zeros(2, bool)).online(0, 0.0)


def stock_train(m):
    """A stock app's train step on the content alone: add 1 to every array."""
    sd = m.content["arrays"]
    return reply({k: sd[k].numpy() + 1 for k in sd}, {"train_loss": 0.5, "num-examples": 10})


def test_standard_nodes_garbage_or_failed_first_reply_is_excluded_later_errors_are_drops(monkeypatch):
    monkeypatch.setattr(grid, "Message", Msg)
    calls = {"n": 0}

    def flaky(m):  # good first reply, then an error: a drop, not an exclusion
        calls["n"] += 1
        return stock_train(m) if calls["n"] == 1 else "ValueError: disk full"

    g = FakeGrid({3: flaky, 1: lambda m: RecordDict({"metrics": MetricRecord({"x": 1.0})}),
                  2: lambda m: "LoadClientAppError: No module named 'myapp'"})
    lines = []
    ex = GridExecutor(g, {}, 3, poll=0.0, client_api="message", layout=LAYOUT, log=lines.append,
                      client_cfg=SimpleNamespace(lr=0.1, lr_decay=1.0, local_epochs=None, local_steps=1,
                                                 batch_size=4))
    ex.start()
    assert ex.nodes == [1, 2, 3] and not [m for m in g.sent]  # no setup query for stock nodes
    eng = FakeEngine(3)
    process = ex.bind_engine(eng)
    ex.submit([job(client=c) for c in range(3)])
    res = {r.client: r for r in (ex.next_result() for _ in range(3))}
    np.testing.assert_array_equal(res[2].update.delta, np.ones(18, np.float32))  # client 2 -> node 3
    assert res[0].error == ("malformed reply: UnknownFormat: expected one ArrayRecord and one MetricRecord, "
                            "got 0 and 1 (keys: metrics)")
    assert res[1].error == "ClientApp error: LoadClientAppError: No module named 'myapp'"
    assert lines == ["node 1 excluded: answers in an unknown format: UnknownFormat: expected one ArrayRecord and "
                     "one MetricRecord, got 0 and 1 (keys: metrics)",
                     "node 2 excluded: setup failed: LoadClientAppError: No module named 'myapp'"]
    assert [(e["node"], e["clients"]) for e in eng.events] == [(1, [0]), (2, [1])]
    assert process.online(1, 0.0).tolist() == [False, False, True]
    ex.submit([job(client=2)])
    assert ex.next_result().error == "ClientApp error: ValueError: disk full"
    assert 3 not in ex.excluded
    sent = g.sent[0].content
    assert set(sent.keys()) == {"arrays", "config"} and dict(sent["config"])["server-round"] == 3
    buf = io.BytesIO(sent["arrays"]["1.bias"].data)
    np.testing.assert_array_equal(np.load(buf), [15.0, 16.0, 17.0])


# --- `model: {name: torch_module}`: the server's model is the app's own network class ---------------

OWN_NET = '''
import torch
from torch import nn


class Net(nn.Module):
    """A quickstart-style network with named layers (its state_dict keys are fc1.*, fc2.*)."""

    def __init__(self, hidden=8):
        super().__init__()
        self.fc1 = nn.Linear(5, hidden)
        self.fc2 = nn.Linear(hidden, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def not_a_module():
    return 3
'''


def test_torch_module_is_the_apps_own_class_with_its_state_dict_keys(tmp_path, monkeypatch):
    from fedsim.runner import run
    from fedsim.training.models import TorchModule

    (tmp_path / "ownnet.py").write_text(OWN_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = TorchModule(module="ownnet:Net", kwargs={"hidden": 6})
    layout = standard.layout_of(spec, (5,), 4)
    assert layout.names == ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    assert layout.shapes == ((6, 5), (6,), (4, 6), (4,))
    raw = merge(TINY, engine={"rounds": 3}, model={"name": "torch_module", "module": "ownnet:Net", "device": "cpu"},
                data={"dataset": {"name": "gaussian_mixture", "num_samples": 600, "num_test": 200, "dim": 5,
                                  "num_classes": 4}})
    res = run(from_mapping(raw), tmp_path / "run")
    assert res.params.size == 5 * 8 + 8 + 8 * 4 + 4
    assert res.final["test_accuracy"] > 0.5  # 4 well-separated classes: it learns


@pytest.mark.parametrize("module, line", [
    ("ownnet.Net", "model.module: expected package.module:Class, got 'ownnet.Net'"),
    ("own net:Net", "model.module: expected package.module:Class"),
])
def test_torch_module_name_is_checked_at_load(module, line):
    from fedsim.errors import ScenarioError

    with pytest.raises(ScenarioError) as info:
        from_mapping(merge(TINY, model={"name": "torch_module", "module": module}))
    assert line in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("module, line", [
    ("no_such_package_x:Net", "model: torch_module 'no_such_package_x:Net' cannot be imported: No module named"),
    ("ownnet:Missing", "cannot be imported: module 'ownnet' has no attribute 'Missing'"),
    ("ownnet:not_a_module", "returned a int, not a torch nn.Module"),
])
def test_torch_module_that_cannot_be_built_is_one_line_at_run(tmp_path, monkeypatch, module, line):
    from fedsim.errors import RunError
    from fedsim.runner import run

    (tmp_path / "ownnet.py").write_text(OWN_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RunError) as info:
        run(from_mapping(merge(TINY, model={"name": "torch_module", "module": module})), tmp_path / "run")
    assert line in str(info.value) and "\n" not in str(info.value)


def test_torch_module_refuses_the_vectorized_executor():
    from fedsim.errors import ScenarioError

    with pytest.raises(ScenarioError, match="has no batched form"):
        from_mapping(merge(TINY, model={"name": "torch_module", "module": "ownnet:Net"},
                           executor={"name": "vectorized"}))
