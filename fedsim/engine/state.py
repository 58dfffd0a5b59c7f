"""Small mutable records of the engine: a dispatched job's timeline and the run's counters."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.types import Job


@dataclass
class Pending:
    """A dispatched job and its fixed virtual timeline.

    Attributes:
        job: the job as submitted to the executor.
        client: its client.
        start: virtual dispatch time.
        finish: virtual time the client's compute is done.
        arrive: virtual time the server receives the upload (or learns of the drop).
        dropped: the drop reason when the job will never arrive, else None.
        lost: the upload is lost on the uplink (drawn at dispatch; the client still trains).
    """

    job: Job
    client: int
    start: float
    finish: float  # compute done
    arrive: float  # upload received by the server
    dropped: str | None = None  # reason, when the job will never arrive
    lost: bool = False  # the upload is lost on the uplink (drawn at dispatch; the client still trains)


@dataclass
class Counters:
    """Running totals of a run, written into every metrics.jsonl row.

    Attributes:
        num_updates: updates handed to the strategy.
        num_failed: jobs that brought no usable update (drops of every kind).
        bytes_up: uplink bytes the server received (vector and up message; with `compression:` their
            compressed wire size, fedsim.pipeline.compression).
        bytes_down: downlink bytes sent (the model, once per job).
        dispatches: jobs dispatched so far (the next job's dispatch index).
        secagg_failed: sync rounds whose secure aggregation aborted (fedsim.pipeline.secagg).
    """

    num_updates: int = 0
    num_failed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dispatches: int = 0
    secagg_failed: int = 0
