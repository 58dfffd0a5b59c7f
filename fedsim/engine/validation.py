"""Server-side checks on every update before a strategy sees it (a failing rule is a `drop`)."""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from fedsim.strategy.contracts import message_arrays
from fedsim.types import ClientUpdate


def validate_update(update: ClientUpdate | None, size: int, client: int, max_norm: float | None = None, *,
                    sends: str = "delta", up_type: type | None = None,
                    base: np.ndarray | None = None) -> str | None:
    """Why an update must be rejected, or None.

    Guards the global model against broken or malicious clients: the vector must be of the
    kind the strategy declares, of shape (size,), floating and finite; the up message must
    be an instance of the strategy's `up_type` whose ndarray fields are finite (size,)
    float vectors; and, with `max_norm`, the step must be bounded — the delta itself, or
    model − `base` for a model update.

    Args:
        update: what the client sent (None when nothing came back).
        size: d, the model size.
        client: the client the job was for.
        max_norm: bound on the L2 norm of the step (None = none).
        sends: the strategy's declared `sends` ("delta" or "model").
        up_type: the strategy's declared `up_type` (None = no up message allowed).
        base: the model the client started from (needed for a model's norm bound).

    Returns:
        A one-line reason, or None when the update is acceptable.
    """
    if update is None:
        return "no update"
    if not isinstance(update, ClientUpdate):
        return f"not an update ({type(update).__name__})"
    if update.client != client:
        return f"update claims client {update.client}, job was for client {client}"
    if update.kind != sends:
        return f"update carries a {update.kind!r}, the strategy expects a {sends!r}"
    v = update.vector
    if not isinstance(v, np.ndarray) or v.shape != (size,):
        return f"wrong shape {getattr(v, 'shape', type(v).__name__)}, expected ({size},)"
    if not np.issubdtype(v.dtype, np.floating):
        return f"{update.kind} has dtype {v.dtype}, expected floats"
    if not np.all(np.isfinite(v)):
        return "non-finite values in update"
    why = _message_problem(update.up, up_type, size)
    if why is not None:
        return why
    if max_norm is not None:
        step = v.astype(np.float64)
        if update.kind == "model" and base is not None:
            step = step - np.asarray(base, dtype=np.float64)  # bound the move, not the model
        norm = float(np.linalg.norm(step))
        if not norm <= max_norm:
            return f"update norm {norm:.3g} exceeds bound {max_norm:g}"
    if not isinstance(update.num_examples, (int, np.integer)) or update.num_examples < 0:
        return f"bad num_examples {update.num_examples!r}"
    return None


def _message_problem(up: object, up_type: type | None, size: int) -> str | None:
    """Why the up message is unacceptable: wrong type, or a malformed field."""
    if up_type is None:
        return None if up is None else f"unexpected up message {type(up).__name__}"
    if not isinstance(up, up_type):
        return f"up message missing or not a {up_type.__name__} (got {type(up).__name__})"
    arrays = message_arrays(up)
    for f in dataclasses.fields(up):
        value = getattr(up, f.name)
        if f.name in arrays:
            if not isinstance(value, np.ndarray) or value.shape != (size,):
                return f"up field {f.name!r} missing or of wrong shape"
            if not np.issubdtype(value.dtype, np.floating):
                return f"up field {f.name!r} is not a float array"
            if not np.all(np.isfinite(value)):
                return f"non-finite values in up field {f.name!r}"
        elif not isinstance(value, (numbers.Number, str, np.generic)):
            return f"up field {f.name!r} has type {type(value).__name__}"
    return None
