"""Where client jobs run. Every executor takes the same `Setup` once, then `Job`s, and
returns `JobResult`s in whatever order they finish; the engine restores virtual-time
order. Table `EXECUTORS` maps names to config dataclasses whose `create()` builds the
executor (heavy imports such as ray and flwr happen inside `create`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from fedsim.data.federated import FederatedData
from fedsim.executors.flower import Flower
from fedsim.executors.inline import Inline
from fedsim.executors.ray_executor import Ray
from fedsim.executors.vectorized import Vectorized
from fedsim.scenario.schema import ClientConfig
from fedsim.types import Job, JobResult


@dataclass(frozen=True)
class Setup:
    """Everything a worker needs to build its resident ClientRuntime (picklable)."""

    data: FederatedData
    model: Any  # a fedsim.training.models spec
    client: ClientConfig
    strategy: Any
    seed: int

    def work(self, client: int) -> int:
        """Examples one job of `client` pushes through the model (local steps x batch):
        a cost estimate that lets executors start the longest jobs first."""
        n = int(self.data.train_offsets[client + 1] - self.data.train_offsets[client])
        b = min(self.client.batch_size, max(n, 1))
        if self.client.local_epochs:
            return self.client.local_epochs * max(n, 1)
        return self.client.local_steps * b


def longest_first(jobs: Sequence[Job], setup: Setup) -> list[Job]:
    """Jobs ordered by estimated work, largest first (ties keep submission order). A sync
    round ends with its slowest worker; starting the long jobs first leaves the short
    ones to even out the finish. Results never depend on the order jobs run in."""
    return sorted(jobs, key=lambda j: -setup.work(j.task.client))


class Executor(Protocol):
    def start(self, setup: Setup) -> None: ...
    def submit(self, jobs: Sequence[Job]) -> None: ...
    def next_result(self) -> JobResult: ...  # blocks until any submitted job is done
    def close(self) -> None: ...


EXECUTORS: dict[str, type] = {
    "inline": Inline,
    "ray": Ray,
    "flower": Flower,
    "vectorized": Vectorized,
}

__all__ = ["EXECUTORS", "Executor", "Setup", "longest_first"]
