from __future__ import annotations

from dataclasses import dataclass

from fedsim.types import Job


@dataclass
class Pending:
    """A dispatched job and its fixed virtual timeline."""

    job: Job
    client: int
    start: float
    finish: float  # compute done
    arrive: float  # upload received by the server
    dropped: str | None = None  # reason, when the job will never arrive
    lost: bool = False  # the upload is lost on the uplink (drawn at dispatch; the client still trains)


@dataclass
class Counters:
    num_updates: int = 0
    num_failed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dispatches: int = 0
