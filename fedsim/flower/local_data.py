"""A deployed client's own data: `fedsim deploy client --data FILE.npz`.

Format: one NumPy `.npz` archive with
    x_train  float array (n, *input_shape)   the client's training examples
    y_train  int array (n,) of class ids in [0, num_classes), or float (n,) for regression
    x_test   optional, (m, *input_shape)      the client's local test split (per-client
    y_test   optional, (m,)                   accuracy and fairness metrics)
`input_shape` must match the scenario's dataset (the model is built from it).

The client's rows become client `client`'s slice of a FederatedData whose other clients
are empty, so the ClientApp trains on it exactly as on a simulated partition.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsim.data.federated import FederatedData


def load_npz(path: str | Path, client: int, num_clients: int, num_classes: int,
             input_shape: tuple[int, ...]) -> FederatedData:
    """Client `client`'s own data from `path`, checked against the scenario's task.

    Args:
        path: the client's .npz (x_train, y_train, x_test, y_test).
        client: the client's id.
        num_clients: N of the scenario.
        num_classes: the scenario's number of classes (0 = regression).
        input_shape: the scenario's input shape; the file's must match.

    Returns:
        A federation in which only `client` has data.

    Raises:
        ValueError: if the file is missing or does not match the scenario.
    """
    path = Path(path)
    where = f"client {client} data {path}"
    if not path.is_file():
        raise ValueError(f"{where}: file not found")
    if not 0 <= client < num_clients:
        raise ValueError(f"{where}: client id must be in [0, {num_clients}), got {client}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{where}: not a readable .npz archive ({exc})") from None
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise ValueError(f"{where}: missing array {key!r} (has {sorted(arrays)})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{where}: give both x_test and y_test, or neither")
    x_val = arrays.get("x_test")
    y_val = arrays.get("y_test")

    def check(x: np.ndarray, y: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
        if tuple(x.shape[1:]) != tuple(input_shape):
            raise ValueError(f"{where}: x_{split} rows have shape {tuple(x.shape[1:])}, "
                             f"the scenario's model expects {tuple(input_shape)}")
        if y.shape != (len(x),):
            raise ValueError(f"{where}: y_{split} must have shape ({len(x)},), got {y.shape}")
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{where}: x_{split} has non-finite values")
        if num_classes == 0:
            return x, y.astype(np.float32)
        if not np.issubdtype(y.dtype, np.integer) or (len(y) and (y.min() < 0 or y.max() >= num_classes)):
            raise ValueError(f"{where}: y_{split} must be integer class ids in [0, {num_classes})")
        return x, y.astype(np.int64)

    x, y = check(arrays["x_train"], arrays["y_train"], "train")
    if x_val is None:
        x_val, y_val = x[:0], y[:0]
    else:
        x_val, y_val = check(x_val, y_val, "test")

    def offsets(n: int) -> np.ndarray:  # all rows belong to `client`, every other client is empty
        return np.where(np.arange(num_clients + 1) <= client, 0, n).astype(np.int64)

    return FederatedData(num_clients, num_classes, tuple(input_shape), x, y, offsets(len(y)),
                         x_val, y_val, offsets(len(y_val)), x_val[:0], y_val[:0], None)
