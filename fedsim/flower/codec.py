"""Job and JobResult <-> Flower `RecordDict`, exactly and without pickle.

Every numpy array (global model, delta, payload vectors, numpy scalars inside client
state) goes into one `ArrayRecord` (dtype, shape and bytes preserved); everything else
is a JSON tree in a `ConfigRecord`, with arrays replaced by references. Python floats
survive JSON exactly (shortest round-trip repr). Pickle is avoided on purpose: the same
messages travel between real machines in deployment, where unpickling what a client
sends would let it run code on the server.

Supported values in `config`, `client_state`, `metrics`: None, bool, int, float, str,
numpy arrays and scalars, and lists / tuples / dicts of these.
"""

from __future__ import annotations

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
    record = content.array_records.get(ARRAYS)
    arrays = {k: record[k].numpy() for k in record} if record is not None else {}
    return _unpack(json.loads(str(content.config_records[META][META])), arrays)


def config_of(content: RecordDict) -> ConfigRecord:
    return content.config_records[META]


# -- jobs --------------------------------------------------------------------------------

def encode_job(job: Job, extra_config: Mapping[str, Any] | None = None) -> RecordDict:
    t = job.task
    tree = {"id": job.id, "client": t.client, "params": t.params, "version": t.version, "round": t.round,
            "dispatch": t.dispatch, "seed": t.seed, "config": dict(t.config),
            "client_state": job.client_state, "finish_time": job.finish_time}
    return pack(tree, extra_config)


def decode_job(content: RecordDict) -> Job:
    d = unpack(content)
    task = ClientTask(int(d["client"]), d["params"], int(d["version"]), int(d["round"]), int(d["dispatch"]),
                      int(d["seed"]), d["config"])
    return Job(int(d["id"]), task, d["client_state"], float(d["finish_time"]))


def encode_result(result: JobResult) -> RecordDict:
    u = result.update
    update = None if u is None else {
        "client": u.client, "delta": u.delta, "num_examples": u.num_examples, "base_version": u.base_version,
        "metrics": dict(u.metrics), "payload": dict(u.payload)}
    tree = {"id": result.id, "client": result.client, "update": update, "client_state": result.client_state,
            "error": result.error, "wall_seconds": result.wall_seconds}
    return pack(tree)


def decode_result(content: RecordDict) -> JobResult:
    d = unpack(content)
    u = d["update"]
    update = None if u is None else ClientUpdate(int(u["client"]), u["delta"], int(u["num_examples"]),
                                                 int(u["base_version"]), u["metrics"], u["payload"])
    return JobResult(int(d["id"]), int(d["client"]), update, d["client_state"], d["error"],
                     float(d["wall_seconds"]))
