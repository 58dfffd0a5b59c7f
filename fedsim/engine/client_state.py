"""Per-client strategy state (SCAFFOLD's c_i, FedSpeed's h_i, ADMM's local model, ...).

The engine keeps it for the clients that have one — never a model copy per registered client.

Memory: (clients that have taken part) x (state floats per client) x 4 bytes in float32;
e.g. SCAFFOLD with a 100k-parameter model and 10k distinct participants holds 4 GB.
`engine.client_state: float16` stores every floating-point array inside the states in
half precision (2 bytes per value, relative rounding error ≤ 2^-11 ≈ 4.9e-4 per store)
and hands them back as float32; an array with a value beyond float16's range (|x| > 65504)
stays float32. FedAvg and other stateless strategies store nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

_F16_MAX = float(np.finfo(np.float16).max)


def _convert(obj: Any, half: bool) -> Any:
    if isinstance(obj, np.ndarray):
        if half and obj.dtype in (np.float32, np.float64):
            finite = np.isfinite(obj)
            if not np.any(np.abs(obj[finite]) > _F16_MAX):
                return obj.astype(np.float16)
            return obj
        if not half and obj.dtype == np.float16:
            return obj.astype(np.float32)
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _convert(getattr(obj, f.name), half)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, tuple):
        return tuple(_convert(v, half) for v in obj)
    if isinstance(obj, list):
        return [_convert(v, half) for v in obj]
    if isinstance(obj, dict):
        return {k: _convert(v, half) for k, v in obj.items()}
    return obj


class ClientStates:
    """A mapping client id -> state that stores states at the configured precision."""

    def __init__(self, precision: str = "float32"):
        self.half = precision == "float16"
        self._states: dict[int, Any] = {}

    def get(self, client: int, default: Any = None) -> Any:
        """The state of `client` at full precision, or `default` when it has none.

        Args:
            client: the client id.
            default: returned when no state is stored.

        Returns:
            The stored state (float16 arrays converted back to float32), or `default`.
        """
        state = self._states.get(client)
        if state is None:
            return default
        return _convert(state, False) if self.half else state

    def __setitem__(self, client: int, state: Any) -> None:
        if state is None:
            self._states.pop(client, None)
        else:
            self._states[client] = _convert(state, True) if self.half else state

    def __getitem__(self, client: int) -> Any:
        if client not in self._states:
            raise KeyError(client)
        return self.get(client)

    def __contains__(self, client: object) -> bool:
        return client in self._states

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[int]:
        return iter(self._states)

    def nbytes(self) -> int:
        """Bytes held by numpy arrays inside the stored states.

        Returns:
            The total, over every stored state.
        """
        total = 0

        def walk(obj: Any) -> None:
            nonlocal total
            if isinstance(obj, np.ndarray):
                total += obj.nbytes
            elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
                for f in dataclasses.fields(obj):
                    walk(getattr(obj, f.name))
            elif isinstance(obj, (tuple, list)):
                for v in obj:
                    walk(v)
            elif isinstance(obj, dict):
                for v in obj.values():
                    walk(v)

        for s in self._states.values():
            walk(s)
        return total
