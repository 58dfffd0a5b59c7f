"""The two shapes a dataset plugin's `load` can return: pooled or already per client."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pooled:
    """A centralised dataset; a partitioner splits (x, y) across clients."""

    x: np.ndarray  # (n, *input_shape) float32
    y: np.ndarray  # (n,) int64 labels
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


@dataclass(frozen=True)
class PerClient:
    """Data generated client by client (natural partition)."""

    x: np.ndarray  # all clients' examples, client c at offsets[c]:offsets[c+1]
    y: np.ndarray
    offsets: np.ndarray  # (N+1,)
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int  # 0 for regression
    optimum: np.ndarray | None = None  # closed-form global optimum in `linear` model layout
