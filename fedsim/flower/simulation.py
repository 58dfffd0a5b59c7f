"""The `flower` executor: fedsim's engine inside a Flower ServerApp, client jobs in ClientApps.

The ClientApps run on Flower's simulation engine (Ray backend), via
`flwr.simulation.run_simulation`.

`host(fn)` starts the simulation; the ServerApp main attaches a `GridExecutor` to its Grid
and calls `fn` (the engine's run loop) in the ServerApp thread. One virtual SuperNode per
fedsim client by default (`nodes:` caps it; client c then runs on node c mod nodes).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import tempfile
import threading
import warnings
from typing import Any, Callable, Sequence

from fedsim.errors import RunError
from fedsim.executors.ray_executor import quiet_ray_env, verbose
from fedsim.strategy.contracts import declared
from fedsim.types import Job, JobResult


class FlowerSimulation:
    """The executor the engine sees for `executor: {name: flower}`; jobs travel over a Flower Grid.

    Args:
        cfg: the `executor:` block (nodes, per-client CPUs/GPUs, threads, job timeout, Ray address).
    """

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.setup: Any = None
        self._dir: str | None = None
        self._setup_config: dict[str, Any] = {}
        self._grid_exec: Any = None
        self._abort = threading.Event()

    def start(self, setup: Any) -> None:
        """Write the run's setup (data, model, client and strategy config) where ClientApps can load it.

        The ClientApps find it through the setup config sent with each message (path and hash).

        Args:
            setup: the run's `Setup`.

        Raises:
            RunError: if more GPUs per client are asked for than are visible.
        """
        from fedsim.flower.client_app import SETUP_KEY, SETUP_PATH, THREADS

        if self.cfg.num_gpus > 0 and self.cfg.address is None and os.environ.get("RAY_ADDRESS") is None:
            visible = _num_gpus()
            if visible < self.cfg.num_gpus:  # Flower would wait on an empty actor pool
                raise RunError(f"executor.num_gpus={self.cfg.num_gpus:g} per client but {visible} GPU(s) "
                               "visible here; use num_gpus: 0 (CPU) or at most the number of GPUs")
        self.setup = setup
        blob = pickle.dumps(setup, protocol=pickle.HIGHEST_PROTOCOL)
        self._dir = tempfile.mkdtemp(prefix="fedsim-flower-")
        path = os.path.join(self._dir, "setup.pkl")
        with open(path, "wb") as fh:
            fh.write(blob)
        self._setup_config = {SETUP_KEY: hashlib.sha256(blob).hexdigest(), SETUP_PATH: path,
                              THREADS: int(self.cfg.threads)}

    def num_nodes(self) -> int:
        """Virtual SuperNodes: one per client, capped by `nodes:` (client c then runs on c mod nodes)."""
        n = self.setup.data.num_clients
        return n if self.cfg.nodes is None else min(n, self.cfg.nodes)

    def backend_config(self) -> dict[str, Any]:
        """Flower's Ray backend config: per-client resources, and Ray init arguments for a local cluster."""
        init: dict[str, Any] = {"include_dashboard": False}
        if self.cfg.address is not None:
            init["address"] = self.cfg.address
        elif os.environ.get("RAY_ADDRESS") is None:
            init["num_cpus"] = os.cpu_count() or 1
            init["num_gpus"] = _num_gpus()
        if not verbose():
            init.update(log_to_driver=False, logging_level="ERROR")
        return {"client_resources": {"num_cpus": self.cfg.num_cpus, "num_gpus": self.cfg.num_gpus},
                "init_args": init}

    def host(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` (the engine loop) inside a Flower ServerApp on the simulation engine.

        Args:
            fn: the engine's run loop; it calls `submit` / `next_result` meanwhile.

        Returns:
            What `fn` returned.

        Raises:
            RunError: if the backend fails or the ServerApp ends without finishing; errors raised
                by `fn` itself reach the caller unchanged.
        """
        from fedsim.flower import client_app
        from fedsim.flower.grid import GridExecutor
        from fedsim.flower.server_app import hosting_app

        out: dict[str, Any] = {}

        def body(grid, context) -> None:
            try:
                self._grid_exec = GridExecutor(grid, self._setup_config, self.num_nodes(),
                                               job_timeout=self.cfg.job_timeout, abort=self._abort,
                                               up_type=declared(self.setup.strategy, "up_type"),
                                               state_type=declared(self.setup.strategy, "client_state_type"))
                try:
                    self._grid_exec.connect()
                except (RuntimeError, TimeoutError) as exc:
                    raise RunError(f"executor flower: {exc}") from None
                out["value"] = fn()
            except BaseException as exc:  # the engine's own errors reach the caller unchanged
                out["error"] = exc
                raise

        quiet_ray_env()
        from flwr.simulation import run_simulation

        logger = logging.getLogger("flwr")
        level = logger.level
        if not verbose():
            logger.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                if not verbose():
                    warnings.simplefilter("ignore")
                run_simulation(server_app=hosting_app(body), client_app=client_app.app,
                               num_supernodes=self.num_nodes(), backend_config=self.backend_config(),
                               verbose_logging=verbose())
        except BaseException as exc:
            self._abort.set()  # unblock the ServerApp thread if the backend died under it
            if "error" in out:
                raise out["error"] from None
            if isinstance(exc, RuntimeError):
                cause = exc.__cause__ or exc
                raise RunError(f"executor flower: the simulation backend failed: {_one_line(cause)}") from None
            raise
        finally:
            self._abort.set()
            logger.setLevel(level)
        if "value" not in out:
            raise RunError("executor flower: the ServerApp ended without finishing the run")
        return out["value"]

    def submit(self, jobs: Sequence[Job]) -> None:
        """Send jobs to their clients' SuperNodes (does not wait for results)."""
        self._grid_exec.submit(jobs)

    def next_result(self) -> JobResult:
        """Block until the next job result (or failure) comes back, in arrival order."""
        return self._grid_exec.next_result()

    def close(self) -> None:
        """Stop waiting for results and delete the setup file."""
        self._abort.set()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _num_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
