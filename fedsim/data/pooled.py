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
    """Data already split by client: generated client by client, or a dataset's natural partition.

    A natural dataset (LEAF users, writers in a saved Hugging Face dataset) may bring each
    client's own test rows (`x_val`, `y_val`, `val_offsets`): they become the clients' local
    test splits as they are (no `test_fraction` split). `x_test` None means the data has no
    separate global test set: it is then the union of the clients' local test splits.
    """

    x: np.ndarray  # all clients' examples, client c at offsets[c]:offsets[c+1]
    y: np.ndarray
    offsets: np.ndarray  # (N+1,)
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int  # 0 for regression
    optimum: np.ndarray | None = None  # closed-form global optimum in `linear` model layout
    x_val: np.ndarray | None = None  # each client's own test rows, client c at val_offsets[c]:[c+1]
    y_val: np.ndarray | None = None
    val_offsets: np.ndarray | None = None  # (N+1,); None = split by test_fraction
