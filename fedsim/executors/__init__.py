"""Where client jobs run.

Every executor takes the same `Setup` once, then `Job`s, and returns `JobResult`s in whatever
order they finish; the engine restores virtual-time order. The registry
(`fedsim.registry.EXECUTORS`) maps names to config dataclasses whose `create()` builds the
executor (heavy imports such as ray and flwr happen inside `create`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from fedsim.data.federated import FederatedData
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
        """Estimate the examples one job of `client` pushes through the model.

        local_epochs × n_k, or local_steps × batch size; executors use it to start the
        longest jobs first.

        Args:
            client: the client id k.

        Returns:
            The number of examples, ≥ 1 for any client with data.
        """
        n = int(self.data.train_offsets[client + 1] - self.data.train_offsets[client])
        b = min(self.client.batch_size, max(n, 1))
        if self.client.local_epochs:
            return self.client.local_epochs * max(n, 1)
        return self.client.local_steps * b


def longest_first(jobs: Sequence[Job], setup: Setup) -> list[Job]:
    """Order jobs by estimated work (`Setup.work`), largest first; ties keep submission order.

    A sync round ends with its slowest worker; starting the long jobs first leaves the short
    ones to even out the finish. Results never depend on the order jobs run in.

    Args:
        jobs: the jobs to run.
        setup: the run's setup (for the clients' data sizes and local work).

    Returns:
        A new list of the same jobs.
    """
    return sorted(jobs, key=lambda j: -setup.work(j.task.client))


class Executor(Protocol):
    """What the engine needs from an executor: start once, submit jobs, collect results, close.

    Results may come back in any order; a failing client job comes back as a `JobResult`
    with `error` set, never as an exception.
    """

    def start(self, setup: Setup) -> None:
        """Take the run's setup once, before any job (workers may build their runtimes now).

        Args:
            setup: data, model spec, client config, strategy and seed of the run.
        """
        ...

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue jobs to run; returns without waiting for them.

        Args:
            jobs: the jobs, each with its task and the client's stored strategy state.
        """
        ...

    def next_result(self) -> JobResult:
        """Block until any submitted job is done and return its result.

        Returns:
            The result of one job not returned before.

        Raises:
            RunError: the executor itself failed (not a client job).
        """
        ...

    def close(self) -> None:
        """Stop the workers and release their resources; the executor is not used again."""
        ...



__all__ = ["Executor", "Setup", "longest_first"]
