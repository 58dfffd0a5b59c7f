"""Server-side defenses: update validation limits and robust aggregation around ANY strategy.

Validation (`validation:` block) runs on every update before a strategy sees it
(fedsim.engine.validation.validate_update): the uploaded vector (and every ndarray field of
the strategy's up message) must have the model's shape and finite values, and, when
`max_norm` is set, ‖Δ‖₂ ≤ max_norm (for a model w: ‖w − base‖₂). A rejected
update is a `drop` event in events.jsonl with the reason; training goes on without it.

Robust aggregation (`robust:` block, sync mode) is a wrapper, not a strategy: before the
strategy's `aggregate` runs, every vector the cohort sent — the delta (or model) and each
ndarray field of the up message — is replaced by the cohort's coordinate-wise robust
centre (median, or β-trimmed mean). The strategy then runs unchanged on a cohort whose clients all "agree":
  * FedAvg (weights a_i summing to 1): x + η·Σ a_i Δ̃ = x + η·Δ̃ — exactly the median /
    trimmed-mean aggregators of Yin et al. (ICML 2018), with FedAvg's server learning rate;
  * strategies with their own weights or per-client statistics (FedAU, SCAFFOLD, ...)
    keep their weighting, server state and client bookkeeping, applied to the robust
    direction Δ̃ (their per-client differences inside the cohort are what is given up).
Num_examples, metrics and client ids are left as sent. Coordinate-wise statistics do
not depend on update order. A cohort of 0 or 1 passes through unchanged.

References:
    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards
    Optimal Statistical Rates", ICML 2018. https://arxiv.org/abs/1803.01498
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from fedsim.scenario.fields import bounded
from fedsim.strategy.contracts import message_arrays
from fedsim.types import ClientUpdate


def coordinate_median(stack: np.ndarray) -> np.ndarray:
    """Coordinate-wise median of an (m, d) stack (mean of the two middle values when m is even).

    Args:
        stack: the (m, d) values, one row per update.

    Returns:
        The (d,) median.
    """
    return np.median(stack, axis=0)


def trimmed_mean(stack: np.ndarray, trim: float) -> np.ndarray:
    """Coordinate-wise β-trimmed mean of an (m, d) stack.

    Per coordinate, drop the ⌊β·m⌋ smallest and ⌊β·m⌋ largest values and average the rest
    (Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards
    Optimal Statistical Rates", ICML 2018, the coordinate-wise trimmed mean).

    Args:
        stack: the (m, d) values, one row per update.
        trim: β, the share dropped at each end (< 0.5).

    Returns:
        The (d,) trimmed mean.
    """
    m = stack.shape[0]
    b = int(math.floor(trim * m))
    if b == 0:
        return stack.mean(axis=0)
    return np.sort(stack, axis=0)[b:m - b].mean(axis=0)


def _robustify(updates: Sequence[ClientUpdate], centre) -> list[ClientUpdate]:
    if len(updates) < 2:
        return list(updates)
    vector = centre(np.stack([u.vector.astype(np.float64) for u in updates])).astype(np.float32)
    ups = [u.up for u in updates]
    up_fields: dict[str, np.ndarray] = {}
    if ups[0] is not None and all(type(m) is type(ups[0]) for m in ups):  # validated: one up_type
        for name, first in message_arrays(ups[0]).items():
            stack = np.stack([np.asarray(getattr(m, name), dtype=np.float64) for m in ups])
            up_fields[name] = centre(stack).astype(np.asarray(first).dtype)
    return [replace(u, vector=vector, up=replace(u.up, **up_fields) if up_fields else u.up) for u in updates]


@dataclass(frozen=True, kw_only=True)
class NoRobust:
    """Pass the cohort to the strategy unchanged (default)."""

    def apply(self, updates: Sequence[ClientUpdate]) -> list[ClientUpdate]:
        """The cohort unchanged.

        Args:
            updates: the validated cohort.

        Returns:
            A list of the same updates.
        """
        return list(updates)


@dataclass(frozen=True, kw_only=True)
class Median:
    """Replace every update by the cohort's coordinate-wise median (Yin et al. 2018)."""

    def apply(self, updates: Sequence[ClientUpdate]) -> list[ClientUpdate]:
        """Robust cohort: every update's vector (and up-message arrays) replaced by the coordinate-wise median.

        Args:
            updates: the validated cohort, in commit order.

        Returns:
            The cohort as the strategy sees it (unchanged for fewer than two updates).
        """
        return _robustify(updates, coordinate_median)


@dataclass(frozen=True, kw_only=True)
class TrimmedMean:
    """Replace every update by the cohort's coordinate-wise β-trimmed mean (Yin et al. 2018).

    Args:
        trim: β, the share dropped at EACH end per coordinate (< 0.5); tolerates up to a
            β share of Byzantine clients in the cohort.
    """

    trim: float = bounded(0.1, ge=0.0, lt=0.5)

    def apply(self, updates: Sequence[ClientUpdate]) -> list[ClientUpdate]:
        """Robust cohort: every update's vector (and up-message arrays) replaced by the coordinate-wise β-trimmed mean.

        Args:
            updates: the validated cohort, in commit order.

        Returns:
            The cohort as the strategy sees it (unchanged for fewer than two updates).
        """
        return _robustify(updates, lambda s: trimmed_mean(s, self.trim))


