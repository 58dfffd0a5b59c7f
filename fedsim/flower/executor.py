"""Config of the `flower` executor.

Its implementation is in `fedsim.flower.simulation`; this module imports no flwr, so
validating a scenario that names the executor stays light.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.scenario.fields import bounded


@dataclass(frozen=True, kw_only=True)
class Flower:
    """fedsim's engine in a Flower ServerApp, clients in Flower ClientApps (simulation engine).

    Args:
        nodes: virtual SuperNodes; unset = one per client (client c runs on node c mod nodes).
        num_cpus: CPUs per ClientApp actor (Flower `client_resources`).
        num_gpus: GPU share per ClientApp actor.
        address: run the actors on an existing Ray cluster (else RAY_ADDRESS, else a local one).
        threads: torch intra-op threads per actor (1 keeps results identical to inline).
        job_timeout: wall seconds without a reply after which a job counts as failed.
    """

    nodes: int | None = bounded(None, ge=1, le=10_000_000)
    num_cpus: float = bounded(1.0, gt=0.0, le=1024)
    num_gpus: float = bounded(0.0, ge=0.0, le=64)
    address: str | None = None
    threads: int = bounded(1, ge=1, le=256)
    job_timeout: float = bounded(3600.0, gt=0.0)

    def create(self):
        """Build the executor (imports flwr and ray now, not when the scenario is validated).

        Returns:
            A `FlowerSimulation` that runs fedsim's engine inside a Flower ServerApp.
        """
        from fedsim.flower.simulation import FlowerSimulation

        return FlowerSimulation(self)
