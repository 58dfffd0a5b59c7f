from __future__ import annotations

import numpy as np

from fedsim.types import ClientUpdate


def validate_update(update: ClientUpdate | None, size: int, client: int, max_norm: float | None = None,
                    payload_keys: tuple[str, ...] = ()) -> str | None:
    """Why an update must be rejected, or None. Guards the global model against broken or
    malicious clients (shape, non-finite values, absurd norm, missing or malformed payload
    vectors that the strategy declares in `payload_keys`)."""
    if update is None:
        return "no update"
    if update.client != client:
        return f"update claims client {update.client}, job was for client {client}"
    d = update.delta
    if not isinstance(d, np.ndarray) or d.shape != (size,):
        return f"wrong shape {getattr(d, 'shape', type(d).__name__)}, expected ({size},)"
    if not np.issubdtype(d.dtype, np.floating):
        return f"delta has dtype {d.dtype}, expected floats"
    if not np.all(np.isfinite(d)):
        return "non-finite values in update"
    for key in payload_keys:  # vectors the strategy requires (e.g. SCAFFOLD's delta_c)
        v = update.payload.get(key) if hasattr(update.payload, "get") else None
        if not isinstance(v, np.ndarray) or v.shape != (size,):
            return f"payload {key!r} missing or of wrong shape"
    for key, vec in update.payload.items():
        if not isinstance(vec, np.ndarray) or not np.issubdtype(vec.dtype, np.number):
            return f"payload {key!r} is not a numeric array"
        if not np.all(np.isfinite(vec)):
            return f"non-finite values in payload {key!r}"
    if max_norm is not None:
        norm = float(np.linalg.norm(d.astype(np.float64)))
        if not norm <= max_norm:
            return f"update norm {norm:.3g} exceeds bound {max_norm:g}"
    if not isinstance(update.num_examples, (int, np.integer)) or update.num_examples < 0:
        return f"bad num_examples {update.num_examples!r}"
    return None
