"""Plain values passed between the engine, strategies and executors (numpy only).

Model parameters travel as one flat float32 vector (`Params`); `fedsim.training.models.Layout`
maps it to a torch module. Deltas follow Reddi et al. (ICLR 2021, Alg. 1):
`delta = (local model after training) - (model the client started from)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import numpy as np

Params = np.ndarray  # flat float32 vector, shape (d,)
ClientId = int


def _empty() -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True)
class ClientTask:
    """One client job as the client sees it.

    `params` is the global model *as received* (downlink channel noise already
    applied). `seed` is derived from (root seed, client, dispatch index) so the job's
    randomness does not depend on which worker runs it or when.
    """

    client: ClientId
    params: Params
    version: int  # server model version the client downloaded
    round: int  # sync round, or the version for async runs
    dispatch: int  # global dispatch index of this job (stable id)
    seed: int
    down: Any = None  # the strategy's down message (an instance of its `down_type`), from configure
    lr_step: int | None = None  # exponent t of client.lr_decay (None: `round`); see ClientConfig


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sends back (before uplink noise).

    `vector` is the flat float32 vector the client uploads and `kind` says what it is:
    a `delta` (local model − model received, the default) or a `model` (the local model
    itself, e.g. ADMM's w_k). The field is deliberately not called `delta`: reading it
    through the `delta` or `model` accessor raises on the wrong kind, so code written
    for deltas cannot average models by accident, and validation, norm bounds, noise and
    attacks can act on the right thing (a model's norm bound applies to model − base).
    `up` is the strategy's typed up message (an instance of its `up_type`, e.g.
    SCAFFOLD's Δc_i), or None.
    """

    client: ClientId
    vector: Params
    num_examples: int
    base_version: int
    metrics: Mapping[str, float] = field(default_factory=_empty)  # train_loss, strategy scalars
    up: Any = None
    kind: Literal["delta", "model"] = "delta"

    @property
    def delta(self) -> Params:
        """The uploaded delta; raises TypeError when the update carries a model."""
        if self.kind != "delta":
            raise TypeError(f"client {self.client}'s update carries a {self.kind}, not a delta")
        return self.vector

    @property
    def model(self) -> Params:
        """The uploaded local model; raises TypeError when the update carries a delta."""
        if self.kind != "model":
            raise TypeError(f"client {self.client}'s update carries a {self.kind}, not a model")
        return self.vector


@dataclass(frozen=True)
class RoundInfo:
    """Context for a synchronous aggregation."""

    round: int
    num_clients: int  # N: every registered client, not only this round's cohort
    dispatched: tuple[ClientId, ...]  # clients that were sent work this round
    virtual_time: float


@dataclass(frozen=True)
class ArrivalInfo:
    """Context for one asynchronous arrival (or a timer tick when `update` is None)."""

    version: int  # server version at arrival
    virtual_time: float
    num_clients: int
    staleness: int = 0
    base_params: Params | None = None  # the server model the client started from (arrivals only)


@dataclass(frozen=True)
class Job:
    """A unit of client work handed to an executor."""

    id: int  # == task.dispatch
    task: ClientTask
    client_state: Any = None  # per-client strategy state, stored by the engine
    finish_time: float = 0.0  # virtual finish time, fixed at dispatch


@dataclass(frozen=True)
class JobResult:
    """An executor's answer to a Job: an update, or an error string (never an exception)."""

    id: int
    client: ClientId
    update: ClientUpdate | None
    client_state: Any = None
    error: str | None = None
    wall_seconds: float = 0.0


@dataclass(frozen=True)
class Oracle:
    """Facts the server does NOT know in a real deployment.

    Only baselines that are explicitly oracles (FedAU's `known_probability`, FedFix/FedBuff 'weight' variants)
    receive it, via `init(params, num_clients, oracle=...)` when `uses_oracle` is set.
    """

    participation_probs: np.ndarray | None  # p_n, or None when the process has no fixed p_n
    mean_durations: np.ndarray  # expected job duration per client (virtual seconds)
    num_examples: np.ndarray  # n_k
