"""Job and JobResult <-> Flower `RecordDict`, exactly and without pickle.

Every numpy array (global model, delta, the array fields of typed messages, numpy scalars inside client
state) goes into one `ArrayRecord` (dtype, shape and bytes preserved); everything else
is a JSON tree in a `ConfigRecord`, with arrays replaced by references. Python floats
survive JSON exactly (shortest round-trip repr). Pickle is avoided on purpose: the same
messages travel between real machines in deployment, where unpickling what a client
sends would let it run code on the server.

Supported values in `client_state` and `metrics`: None, bool, int, float, str, numpy
arrays and scalars, and lists / tuples / dicts of these. The strategy's typed messages
(`ClientTask.down`, `ClientUpdate.up`, frozen dataclasses of arrays and scalars) travel as
their fields only — no type name on the wire — and are rebuilt with the `down_type` /
`up_type` the receiving side's strategy declares, so a peer cannot choose what class is
instantiated. A client state that is a dataclass (ADMM's, FedCE's) travels the same way
and is rebuilt with the strategy's `client_state_type`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedsim.types import ClientTask, ClientUpdate, Job, JobResult

ARRAYS = "fedsim.arrays"
META = "fedsim.meta"
_TAGS = ("__a", "__s", "__t", "__d")


def _pack(obj: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    if obj is None or isinstance(obj, (bool, str, int, float)):
        return obj
    if isinstance(obj, np.ndarray):
        key = str(len(arrays))
        arrays[key] = obj
        return {"__a": key}
    if isinstance(obj, np.generic):
        key = str(len(arrays))
        arrays[key] = np.asarray(obj)
        return {"__s": key}
    if isinstance(obj, list):
        return [_pack(v, arrays, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"__t": [_pack(v, arrays, f"{path}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _pack(v, arrays, f"{path}.{k}") for k, v in obj.items()}
        return {"__d": [[_pack(k, arrays, path), _pack(v, arrays, f"{path}[{k!r}]")] for k, v in obj.items()]}
    raise TypeError(f"{path}: a {type(obj).__name__} cannot travel in a Flower message "
                    "(use numbers, strings, numpy arrays, lists, tuples or dicts)")


def _unpack(obj: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(obj, list):
        return [_unpack(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__a" in obj:
            return arrays[obj["__a"]]
        if "__s" in obj:
            return arrays[obj["__s"]][()]
        if "__t" in obj:
            return tuple(_unpack(v, arrays) for v in obj["__t"])
        if "__d" in obj:
            return {_hashable(_unpack(k, arrays)): _unpack(v, arrays) for k, v in obj["__d"]}
        return {k: _unpack(v, arrays) for k, v in obj.items()}
    return obj


def _hashable(k: Any) -> Any:
    return k.item() if isinstance(k, np.generic) else k


def pack(tree: Any, extra_config: Mapping[str, Any] | None = None) -> RecordDict:
    """A JSON-able tree with numpy leaves -> RecordDict({ARRAYS, META})."""
    arrays: dict[str, np.ndarray] = {}
    meta = json.dumps(_pack(tree, arrays, "message"), allow_nan=True)
    config = ConfigRecord({META: meta, **(extra_config or {})})
    record = ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})
    return RecordDict({ARRAYS: record, META: config})


def unpack(content: RecordDict) -> Any:
    """Rebuild the tree `pack` wrote: numpy leaves from the ArrayRecord, the rest from JSON.

    Args:
        content: a message's RecordDict as `pack` made it.

    Returns:
        The tree, with arrays as numpy arrays.
    """
    record = content.array_records.get(ARRAYS)
    arrays = {k: record[k].numpy() for k in record} if record is not None else {}
    return _unpack(json.loads(str(content.config_records[META][META])), arrays)


def config_of(content: RecordDict) -> ConfigRecord:
    """The META config record of a packed message (its JSON tree and the extra config keys)."""
    return content.config_records[META]


# -- typed messages -----------------------------------------------------------------------

def _message_fields(message: Any, what: str) -> dict[str, Any] | None:
    """A down/up message dataclass -> {field: value} (None stays None)."""
    if message is None:
        return None
    if not (dataclasses.is_dataclass(message) and not isinstance(message, type)):
        raise TypeError(f"{what}: a {type(message).__name__} is not a message dataclass")
    return {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}


def _message(fields: Any, cls: type | None, what: str) -> Any:
    """{field: value} -> an instance of the declared message type `cls`."""
    if fields is None:
        return None
    if cls is None:
        raise ValueError(f"{what}: a message arrived but the strategy declares no {what}_type")
    names = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(fields, dict) or set(fields) != names:
        got = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
        raise ValueError(f"{what}: expected fields {sorted(names)} of {cls.__name__}, got {got}")
    return cls(**fields)


def _state_fields(state: Any) -> dict[str, Any]:
    """A client state for the tree: plain values as they are, a dataclass as its fields."""
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return {"client_state": None, "client_state_fields": _message_fields(state, "client_state")}
    return {"client_state": state, "client_state_fields": None}


def _state(tree: Mapping[str, Any], state_type: type | None) -> Any:
    fields = tree.get("client_state_fields")
    return tree["client_state"] if fields is None else _message(fields, state_type, "client_state")


# -- jobs --------------------------------------------------------------------------------

def encode_job(job: Job, extra_config: Mapping[str, Any] | None = None) -> RecordDict:
    """A Job -> RecordDict (its down message as plain fields).

    Args:
        job: the job to send.
        extra_config: further message-config keys (the run's setup).

    Returns:
        The message content.
    """
    t = job.task
    tree = {"id": job.id, "client": t.client, "params": t.params, "version": t.version, "round": t.round,
            "dispatch": t.dispatch, "seed": t.seed, "lr_step": t.lr_step, "down": _message_fields(t.down, "down"),
            **_state_fields(job.client_state), "finish_time": job.finish_time}
    return pack(tree, extra_config)


def decode_job(content: RecordDict, down_type: type | None = None, state_type: type | None = None) -> Job:
    """RecordDict -> Job, rebuilding the down message as `down_type`.

    Args:
        content: the message content.
        down_type: the strategy's declared down message type (None: none expected).
        state_type: the strategy's declared `client_state_type` (None: states are plain values).

    Returns:
        The job.
    """
    d = unpack(content)
    task = ClientTask(int(d["client"]), d["params"], int(d["version"]), int(d["round"]), int(d["dispatch"]),
                      int(d["seed"]), _message(d["down"], down_type, "down"),
                      None if d.get("lr_step") is None else int(d["lr_step"]))
    return Job(int(d["id"]), task, _state(d, state_type), float(d["finish_time"]))


def encode_result(result: JobResult) -> RecordDict:
    """A JobResult -> RecordDict (the update's vector, kind and up message fields).

    Args:
        result: the client's answer.

    Returns:
        The message content.
    """
    u = result.update
    update = None if u is None else {
        "client": u.client, "vector": u.vector, "kind": u.kind, "num_examples": u.num_examples,
        "base_version": u.base_version, "metrics": dict(u.metrics), "up": _message_fields(u.up, "up")}
    tree = {"id": result.id, "client": result.client, "update": update, **_state_fields(result.client_state),
            "error": result.error, "wall_seconds": result.wall_seconds}
    return pack(tree)


def decode_result(content: RecordDict, up_type: type | None = None, state_type: type | None = None) -> JobResult:
    """RecordDict -> JobResult, rebuilding the up message as `up_type`.

    Args:
        content: the reply content.
        up_type: the strategy's declared up message type (None: none expected).
        state_type: the strategy's declared `client_state_type` (None: states are plain values).

    Returns:
        The result (the engine validates the update before use).
    """
    d = unpack(content)
    u = d["update"]
    update = None if u is None else ClientUpdate(int(u["client"]), u["vector"], int(u["num_examples"]),
                                                 int(u["base_version"]), u["metrics"],
                                                 _message(u["up"], up_type, "up"), str(u["kind"]))
    return JobResult(int(d["id"]), int(d["client"]), update, _state(d, state_type), d["error"],
                     float(d["wall_seconds"]))
