"""Fairness summaries of per-client accuracy."""

from __future__ import annotations

import math

import numpy as np


def fairness(acc: np.ndarray) -> dict[str, float]:
    """Mean, std, worst-10% mean, min and Jain's index (Σx)²/(n Σx²) of per-client accuracy.

    Clients without local test data (NaN) are left out. Jain's index is 1 when every client has
    the same accuracy and 1/n when one client has it all.

    Args:
        acc: (n,) per-client accuracy in [0, 1], NaN where unknown.

    Returns:
        client_accuracy_{mean, std, worst10, min} and jain_index; all NaN when no client counts.

    References:
        R. Jain, D.-M. Chiu and W. Hawe, "A Quantitative Measure of Fairness and Discrimination
        for Resource Allocation in Shared Computer Systems", DEC Research Report TR-301, 1984.
    """
    a = acc[np.isfinite(acc)]
    if len(a) == 0:
        nan = float("nan")
        return {"client_accuracy_mean": nan, "client_accuracy_std": nan, "client_accuracy_worst10": nan,
                "client_accuracy_min": nan, "jain_index": nan}
    k = max(1, int(math.ceil(0.1 * len(a))))
    sq = float(np.sum(a * a))
    return {
        "client_accuracy_mean": float(a.mean()),
        "client_accuracy_std": float(a.std()),
        "client_accuracy_worst10": float(np.sort(a)[:k].mean()),
        "client_accuracy_min": float(a.min()),
        "jain_index": float(a.sum() ** 2 / (len(a) * sq)) if sq > 0 else 1.0,
    }
