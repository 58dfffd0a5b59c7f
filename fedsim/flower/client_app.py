"""The fedsim `ClientApp`: runs `ClientRuntime.run(job)` on the job carried by a message.

The runtime (model, flat parameter buffer, every client's data) is built once per
process and cached under the setup key the server sends, so a Flower actor pays the
build cost once, not once per message. Where the setup comes from, by message config key:

- `fedsim.setup-path` (+ `fedsim.setup-key`): a pickled `fedsim.executors.Setup` that the
  server wrote for this run (simulation: server and actors share one machine);
- `fedsim.scenario` (+ `fedsim.setup-key`): the resolved scenario YAML; the client rebuilds
  the federation from it deterministically (deployment: each machine builds its own).

Node mapping: a QUERY message is answered with the node's `partition-id` and
`num-partitions` (set by the simulation engine, or by `--node-config` in deployment); the
server routes client `c` to the node whose partition id is `c mod num_nodes`.
"""

from __future__ import annotations

import os
import pickle
import threading
import traceback
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsim.executors import Setup
from fedsim.flower import codec
from fedsim.scenario.loading import from_mapping
from fedsim.strategy.contracts import declared
from fedsim.types import JobResult

SETUP_KEY = "fedsim.setup-key"
SETUP_PATH = "fedsim.setup-path"
SCENARIO = "fedsim.scenario"
THREADS = "fedsim.threads"
SHAPE = "fedsim.data-shape"  # deployment: JSON {num_clients, num_classes, input_shape} for --data clients
# node config keys (`fedsim deploy client`): the client's own .npz, and a testing-only fault
NODE_DATA = "fedsim-data"
NODE_FAULT = "fedsim-fault"

app = ClientApp()

_lock = threading.Lock()
_cache: dict[str, Any] = {}  # setup key -> ClientRuntime (only the newest key is kept)


def load_setup(config, data_path: str = "", client: int = -1) -> Any:
    """The run's `Setup`, from whichever source the server put in the message config.

    With `data_path` (a deployed client's own .npz), that file is client `client`'s data.
    """
    if data_path:
        import json

        import yaml

        from fedsim.flower.local_data import load_npz

        if SCENARIO not in config or SHAPE not in config:
            raise ValueError("--data needs a deployment server (the message carries no scenario)")
        sc = from_mapping(yaml.safe_load(str(config[SCENARIO])), "<scenario from server>")
        shape = json.loads(str(config[SHAPE]))
        data = load_npz(data_path, client, int(shape["num_clients"]), int(shape["num_classes"]),
                        tuple(shape["input_shape"]))
        return Setup(data, sc.model, sc.client, sc.strategy, sc.seed)
    if SETUP_PATH in config:
        with open(str(config[SETUP_PATH]), "rb") as fh:  # written by this run's own server process
            return pickle.load(fh)
    if SCENARIO in config:
        import yaml

        from fedsim.runner import build_data

        sc = from_mapping(yaml.safe_load(str(config[SCENARIO])), "<scenario from server>")
        return Setup(build_data(sc), sc.model, sc.client, sc.strategy, sc.seed)
    raise ValueError("message carries no fedsim setup (setup-path or scenario)")


def runtime_for(config, data_path: str = "", client: int = -1) -> Any:
    """The resident ClientRuntime for this run (built on first use in this process)."""
    key = f"{config[SETUP_KEY]}|{data_path}"
    with _lock:
        rt = _cache.get(key)
        if rt is None:
            from fedsim.training.runtime import ClientRuntime

            s = load_setup(config, data_path, client)
            threads = int(config[THREADS]) if THREADS in config else 1
            rt = ClientRuntime(s.data, s.model, s.client, s.strategy, threads)
            _cache.clear()
            _cache[key] = rt
        return rt


def _error_text(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename.rsplit(os.sep, 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run one fedsim job sent as a TRAIN message and reply with its encoded JobResult.

    Any failure (setup, decoding, training) comes back as a failed JobResult in a normal
    reply, so the server records a drop and goes on.
    """
    content = msg.content
    nc = context.node_config
    fault = str(nc.get(NODE_FAULT, ""))  # testing only (fedsim.flower.client_faults); "" in real use
    job_id, client = _peek_ids(content)
    try:  # the runtime first: its strategy's down_type decodes the job's down message
        rt = runtime_for(codec.config_of(content), str(nc.get(NODE_DATA, "")), client)
    except Exception as exc:  # noqa: BLE001 — reported to the server, never raised
        return Message(codec.encode_result(JobResult(job_id, client, None, None,
                                                     f"client setup: {_error_text(exc)}")), reply_to=msg)
    try:
        job = codec.decode_job(content, declared(rt.strategy, "down_type"),
                               declared(rt.strategy, "client_state_type"))
    except Exception as exc:  # noqa: BLE001
        return Message(codec.encode_result(JobResult(job_id, client, None, None,
                                                     f"bad job message: {_error_text(exc)}")), reply_to=msg)
    result = rt.run(job)
    if fault:
        from fedsim.flower import client_faults as faults

        faults.before(fault, job.task.round)  # crash raises -> Flower error reply; hang never returns
        result = faults.after(fault, result, job.task.round)
    return Message(codec.encode_result(result), reply_to=msg)


def _peek_ids(content: RecordDict) -> tuple[int, int]:
    try:
        import json

        d = json.loads(str(codec.config_of(content)[codec.META]))
        return int(d["id"]), int(d["client"])
    except Exception:  # noqa: BLE001
        return -1, -1


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report this node's partition (for the server's node -> client map).

    When the query carries the setup, the resident runtime is built now (warm-up); a failure
    to build it is reported in the reply's `error` key.
    """
    cfg = msg.content.config_records.get("config", ConfigRecord())
    error = ""
    nc = context.node_config
    # a client with its own data (`--data`) builds it at its first job: a bad file then fails
    # that client's jobs only, and the scenario's dataset need not exist on that machine
    if SETUP_KEY in cfg and not nc.get(NODE_DATA):
        try:
            runtime_for(cfg)
        except Exception as exc:  # noqa: BLE001
            error = _error_text(exc)
    reply = ConfigRecord({"partition-id": int(nc.get("partition-id", -1)),
                          "num-partitions": int(nc.get("num-partitions", 0)), "error": error})
    return Message(RecordDict({"config": reply}), reply_to=msg)
