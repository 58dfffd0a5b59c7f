"""The standard Flower message contents, for a user's own ClientApp (no fedsim on the node).

fedsim's own ClientApp speaks fedsim's format (`fedsim.flower.codec`). A stock Flower
ClientApp, such as the quickstart-pytorch one, speaks the contents Flower 1.39's own
strategies use (`flwr.serverapp.strategy.FedAvg.configure_train` / `aggregate_train`):

- Message API (`@app.train()`), `api="message"`: the server sends
  `RecordDict({"arrays": ArrayRecord(state_dict), "config": ConfigRecord(...)})`; the node
  answers `{"arrays": ArrayRecord(trained state_dict), "metrics": MetricRecord({...,
  "num-examples": n})}`.
- NumPyClient (`ClientApp(client_fn=...)`, Flower's compat layer,
  `flwr/compat/common/recorddict_compat.py`), `api="numpy"`: the server sends
  `{"fitins.parameters": ArrayRecord, "fitins.config": ConfigRecord}`; the node answers
  `fitres.parameters` (arrays in order), `fitres.num_examples`, `fitres.metrics` and
  `fitres.status`.

The model travels as the state_dict of the scenario's torch model (`Layout`: its parameter
names and shapes, in the order of fedsim's flat vector). A reply is turned into the update
fedsim's strategy expects: returned − sent for `sends: delta` strategies, else the model.
Anything else in a reply is an `UnknownFormat` with a one-line reason.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedsim.types import ClientUpdate, Job

APIS = ("message", "numpy")
NUM_EXAMPLES = "num-examples"  # FedAvg's `weighted_by_key` default


class UnknownFormat(ValueError):
    """A node's reply is not the standard format for this model; str() is one line."""


@dataclass(frozen=True)
class Layout:
    """The scenario model's state_dict keys and shapes, in fedsim's flat-vector order.

    Args:
        names: parameter names (`module.named_parameters()`, e.g. "1.weight").
        shapes: their shapes.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        return int(sum(int(np.prod(s)) for s in self.shapes))

    def arrays(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat float32 vector into the named arrays of the state_dict."""
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            n = int(np.prod(shape))
            out[name] = np.asarray(flat[offset:offset + n], dtype=np.float32).reshape(shape)
            offset += n
        return out

    def flat(self, arrays: list[tuple[str, np.ndarray]]) -> np.ndarray:
        """Join (name, array) pairs, in this layout's order, into one float32 vector.

        Raises:
            UnknownFormat: for a missing, extra or misshapen array.
        """
        if len(arrays) != len(self.names):
            raise UnknownFormat(f"expected {len(self.names)} arrays ({', '.join(self.names)}), got {len(arrays)}")
        parts = []
        for (name, a), want, shape in zip(arrays, self.names, self.shapes, strict=True):
            if tuple(a.shape) != shape:
                raise UnknownFormat(f"array {name!r} has shape {tuple(a.shape)}, the model's {want!r} has {shape}")
            if not np.issubdtype(a.dtype, np.floating):
                raise UnknownFormat(f"array {name!r} has dtype {a.dtype}, expected floats")
            parts.append(np.asarray(a, dtype=np.float32).reshape(-1))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def layout_of(spec: Any, input_shape: tuple[int, ...], num_classes: int) -> Layout:
    """The `Layout` of a model spec (built on torch's meta device: nothing is allocated).

    Args:
        spec: the scenario's `model:` block.
        input_shape: shape of one example.
        num_classes: C.

    Returns:
        The layout.

    Raises:
        ValueError: if the model has buffers (they are in a state_dict but not in fedsim's vector).
    """
    import torch

    with torch.device("meta"):
        module = spec.build(input_shape, num_classes)
    buffers = [n for n, _ in module.named_buffers()]
    if buffers:
        raise ValueError(f"the model has buffers ({', '.join(buffers)}), which a standard Flower client "
                         "would expect in its state_dict; use a model without them")
    named = list(module.named_parameters())
    return Layout(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))


def train_config(job: Job, client_cfg: Any) -> dict[str, Any]:
    """The config record a stock ClientApp reads: `lr`, `server-round` and the local-work keys.

    Args:
        job: the job (its round and lr step).
        client_cfg: the scenario's `client:` block.

    Returns:
        {"lr": γ_t (after client.lr_decay), "server-round": round + 1 (Flower counts from 1),
        "local-steps": Q, "batch-size": B, and "local-epochs": E when the scenario sets it}.
    """
    t = job.task
    step = t.round if t.lr_step is None else t.lr_step
    out = {"lr": float(client_cfg.lr * client_cfg.lr_decay ** step), "server-round": int(t.round) + 1,
           "local-steps": int(client_cfg.local_steps), "batch-size": int(client_cfg.batch_size)}
    if client_cfg.local_epochs:
        out["local-epochs"] = int(client_cfg.local_epochs)
    return out


def encode_train(job: Job, layout: Layout, config: Mapping[str, Any], api: str = "message") -> RecordDict:
    """The TRAIN message content for a stock ClientApp.

    Args:
        job: the job; its `task.params` is the model sent.
        layout: the model's state_dict layout.
        config: the config record (`train_config`).
        api: "message" (Message API) or "numpy" (NumPyClient through Flower's compat layer).

    Returns:
        The content.
    """
    arrays = ArrayRecord({k: Array(v) for k, v in layout.arrays(job.task.params).items()})
    if api == "message":
        return RecordDict({"arrays": arrays, "config": ConfigRecord(dict(config))})
    if api == "numpy":
        return RecordDict({"fitins.parameters": arrays, "fitins.config": ConfigRecord(dict(config))})
    raise ValueError(f"client api must be one of {', '.join(APIS)}, got {api!r}")


def _scalar_metrics(record: Mapping[str, Any], skip: str) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k != skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _num_examples(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
        raise UnknownFormat(f"{NUM_EXAMPLES} must be a non-negative integer, got {value!r}")
    return int(value)


def _message_reply(content: RecordDict, layout: Layout) -> tuple[np.ndarray, int, dict[str, float]]:
    arrays, metrics = content.array_records, content.metric_records
    if len(arrays) != 1 or len(metrics) != 1:
        raise UnknownFormat(f"expected one ArrayRecord and one MetricRecord, got {len(arrays)} and {len(metrics)} "
                            f"(keys: {', '.join(sorted(content.keys())) or 'none'})")
    record = next(iter(arrays.values()))
    vector = layout.flat([(k, record[k].numpy()) for k in _ordered(record.keys(), layout)])
    m = next(iter(metrics.values()))
    if NUM_EXAMPLES not in m:
        raise UnknownFormat(f"the MetricRecord has no {NUM_EXAMPLES!r}")
    return vector, _num_examples(m[NUM_EXAMPLES]), _scalar_metrics(m, NUM_EXAMPLES)


def _ordered(keys, layout: Layout) -> list[str]:
    keys = list(keys)
    if set(keys) != set(layout.names):
        missing = sorted(set(layout.names) - set(keys))
        extra = sorted(set(keys) - set(layout.names))
        raise UnknownFormat(f"the arrays are not the model's state_dict (missing {missing or 'none'}, "
                            f"unexpected {extra or 'none'})")
    return list(layout.names)


def _numpy_reply(content: RecordDict, layout: Layout) -> tuple[np.ndarray, int, dict[str, float]]:
    status = content.config_records.get("fitres.status")
    if status is not None and int(status.get("code", 0)) != 0:
        raise UnknownFormat(f"fit failed on the client: {status.get('message', '')}")
    record = content.array_records.get("fitres.parameters")
    count = content.metric_records.get("fitres.num_examples")
    if record is None or count is None or "num_examples" not in count:
        raise UnknownFormat(f"not a NumPyClient fit result (keys: {', '.join(sorted(content.keys())) or 'none'})")
    keys = [k for k in record.keys() if k != "_empty"]
    try:
        arrays = [(k, np.load(io.BytesIO(record[k].data), allow_pickle=False)) for k in keys]
    except ValueError as exc:
        raise UnknownFormat(f"fitres.parameters are not numpy arrays: {exc}") from None
    vector = layout.flat(arrays)
    metrics = content.config_records.get("fitres.metrics", ConfigRecord())
    return vector, _num_examples(count["num_examples"]), _scalar_metrics(metrics, "")


def decode_train(content: RecordDict, job: Job, layout: Layout, sends: str = "delta",
                 api: str = "message") -> ClientUpdate:
    """A stock ClientApp's TRAIN reply -> the `ClientUpdate` fedsim's strategy expects.

    Args:
        content: the reply content.
        job: the job it answers (the model that was sent).
        layout: the model's state_dict layout.
        sends: the strategy's `sends`: "delta" (returned − sent) or "model" (returned).
        api: "message" or "numpy", as in `encode_train`.

    Returns:
        The update; `metrics` holds the reply's other scalar metrics (e.g. train_loss).

    Raises:
        UnknownFormat: with a one-line reason, for anything but the standard reply.
    """
    vector, n, metrics = _numpy_reply(content, layout) if api == "numpy" else _message_reply(content, layout)
    if sends == "delta":
        vector = vector - np.asarray(job.task.params, dtype=np.float32)
    return ClientUpdate(job.task.client, vector.astype(np.float32), n, job.task.version, metrics,
                        None, "delta" if sends == "delta" else "model")


def check_strategy(strategy: Any) -> None:
    """Refuse a strategy whose clients do more than plain local training.

    A stock ClientApp trains and returns its model; a strategy with a client rule
    (`client_update`: SCAFFOLD, FedProx's proximal term, ...), typed down/up messages or
    per-client state needs fedsim's own ClientApp.

    Args:
        strategy: the scenario's strategy.

    Raises:
        ValueError: one line naming what the strategy needs.
    """
    from fedsim.strategy.contracts import declared, hook

    needs = [what for what, has in (("a client rule (client_update)", hook(strategy, "client_update") is not None),
                                    ("a down message", declared(strategy, "down_type") is not None),
                                    ("an up message", declared(strategy, "up_type") is not None),
                                    ("per-client state", declared(strategy, "client_state_type") is not None))
             if has]
    if needs:
        raise ValueError(f"strategy {type(strategy).__name__} needs {' and '.join(needs)}, which a stock Flower "
                         "ClientApp does not have; use a plain-local-training strategy (fedavg, fedadam, fedau, "
                         "fedbuff, ...) or fedsim's own ClientApp")
