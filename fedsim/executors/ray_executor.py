"""The `ray` executor: a pool of Ray actors, each holding a resident `ClientRuntime`
(model, flat parameter buffer and every client's data), so a job costs one parameter
copy in and one out. The run's `Setup` is put in the object store once; each global
model version is put once and shared by every job of that version; results come back
as they finish (`ray.wait`). Per-client state travels in the Job and JobResult and is
stored by the engine, so any actor can run any client.

`import ray` happens only when the executor starts.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from fedsim.config import bounded
from fedsim.types import ClientTask, Job, JobResult


def verbose() -> bool:
    return os.environ.get("FEDSIM_VERBOSE", "") not in ("", "0")


def quiet_ray_env() -> None:
    """Environment that keeps Ray quiet; call before `import ray`."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # FutureWarning on every start
    if not verbose():
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        warnings.filterwarnings("ignore", module="ray")


@dataclass(frozen=True, kw_only=True)
class Ray:
    """Ray actors with resident models; local machine or an existing Ray cluster.

    Args:
        address: an existing cluster (`ray start --head` prints it; `auto` finds a local
            one); unset = RAY_ADDRESS if set, else start a private local cluster.
        actors: pool size; unset = as many as the cluster's free resources allow.
        num_cpus: CPUs reserved per actor (= per running client job).
        num_gpus: GPU share per actor; 0.25 packs 4 clients on one GPU.
        threads: torch intra-op threads per actor (1 keeps results identical to inline).
        inflight: jobs queued per actor, to hide the round trip between jobs.
    """

    address: str | None = None
    actors: int | None = bounded(None, ge=1, le=100_000)
    num_cpus: float = bounded(1.0, ge=0.0, le=1024)
    num_gpus: float = bounded(0.0, ge=0.0, le=64)
    threads: int = bounded(1, ge=1, le=256)
    inflight: int = bounded(2, ge=1, le=64)

    def create(self) -> "RayExecutor":
        return RayExecutor(self)


class _Worker:
    """Actor body: one resident ClientRuntime serving any client."""

    def __init__(self, threads: int):
        import torch  # noqa: F401 — the slow import happens while the driver builds the data

        import fedsim.client  # noqa: F401

        self.threads = threads
        self.rt: Any = None

    def load(self, setup: Any) -> bool:
        from fedsim.client import ClientRuntime

        self.rt = ClientRuntime(setup.data, setup.model, setup.client, setup.strategy, self.threads)
        return True

    def run(self, job: Job, params: np.ndarray) -> JobResult:
        t = job.task
        task = ClientTask(t.client, np.array(params, copy=True), t.version, t.round, t.dispatch, t.seed, t.config)
        return self.rt.run(Job(job.id, task, job.client_state, job.finish_time))


class RayExecutor:
    """Boots in a background thread from construction (Ray start and actor imports overlap
    the driver's data loading); `start(setup)` waits for it and loads the setup."""

    def __init__(self, cfg: Ray):
        self.cfg = cfg
        self.ray: Any = None
        self._owns_cluster = False
        self._actors: list[Any] = []
        self._load: list[int] = []  # jobs queued per actor
        self._queue: collections.deque[Job] = collections.deque()
        self._futures: dict[Any, tuple[int, Job]] = {}  # ObjectRef -> (actor index, job)
        self._params: list[tuple[np.ndarray, Any]] = []  # recent (params array, ObjectRef)
        self._setup_ref: Any = None
        self._boot_error: BaseException | None = None
        self._booted, self._release = threading.Event(), threading.Event()
        self._boot = threading.Thread(target=self._boot_safely, name="fedsim-ray-boot", daemon=True)
        self._boot.start()

    # -- lifecycle ----------------------------------------------------------------------------

    def _boot_safely(self) -> None:
        try:
            self._start_ray()
        except BaseException as exc:  # noqa: BLE001 — re-raised in start()
            self._boot_error = exc
        finally:
            self._booted.set()
        # Ray ties the processes it starts to the life of the *thread* that started them
        # (parent-death signal), so this thread lives until close() has shut Ray down.
        self._release.wait()

    def _start_ray(self) -> None:
        from fedsim.run import RunError

        quiet_ray_env()
        import ray

        self.ray = ray
        address = self.cfg.address or os.environ.get("RAY_ADDRESS")
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False}
            if not verbose():
                kwargs.update(log_to_driver=False, logging_level="ERROR")
            path = os.pathsep.join(p for p in sys.path if p)
            if address:  # workers elsewhere do not inherit this process's environment
                kwargs.update(address=address, runtime_env={"env_vars": {"PYTHONPATH": path}})
            else:  # a local cluster's workers inherit it (cheaper than a runtime_env)
                os.environ["PYTHONPATH"] = path
                kwargs["num_cpus"] = os.cpu_count() or 1
            try:
                ray.init(**kwargs)
            except Exception as exc:  # noqa: BLE001
                where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
                raise RunError(f"executor ray: cannot start or reach {where}: {_one_line(exc)}") from None
            self._owns_cluster = True
        n = self._pool_size(ray.cluster_resources())
        remote = ray.remote(_Worker).options(num_cpus=self.cfg.num_cpus, num_gpus=self.cfg.num_gpus)
        self._actors = [remote.remote(self.cfg.threads) for _ in range(n)]
        self._load = [0] * n

    def start(self, setup: Any) -> None:
        from fedsim.run import RunError

        self._booted.wait()
        if self._boot_error is not None:
            err, self._boot_error = self._boot_error, None
            self.close()
            raise err
        ray = self.ray
        self._setup_ref = ray.put(setup)
        try:
            ray.get([a.load.remote(self._setup_ref) for a in self._actors])
        except Exception as exc:  # noqa: BLE001
            self.close()
            raise RunError(f"executor ray: actors failed to start: {_one_line(exc)}") from None

    def _pool_size(self, resources: dict[str, float]) -> int:
        from fedsim.run import RunError

        cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        if self.cfg.num_gpus > 0 and gpus < self.cfg.num_gpus:
            raise RunError(f"executor.num_gpus={self.cfg.num_gpus:g} but the Ray cluster has "
                           f"{gpus:g} GPU(s); use num_gpus: 0 or a cluster with GPUs")
        cap = int(cpus // self.cfg.num_cpus) if self.cfg.num_cpus > 0 else 1_000_000
        if self.cfg.num_gpus > 0:
            cap = min(cap, int(round(gpus / self.cfg.num_gpus, 6)))
        n = self.cfg.actors if self.cfg.actors is not None else cap
        if n < 1 or n > max(cap, 0):
            raise RunError(f"executor ray: {n} actor(s) of {self.cfg.num_cpus:g} CPU / {self.cfg.num_gpus:g} GPU "
                           f"do not fit the cluster ({cpus:g} CPU, {gpus:g} GPU)")
        return n

    def close(self) -> None:
        self._booted.wait()
        try:
            self._shutdown()
        finally:
            self._release.set()
            self._boot.join()

    def _shutdown(self) -> None:
        ray = self.ray
        if ray is None:
            return
        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001
                pass
        self._actors, self._futures, self._params = [], {}, []
        if self._owns_cluster and ray.is_initialized():
            ray.shutdown()  # stops a local cluster we started; only disconnects from a remote one
        self._owns_cluster = False
        self.ray = None

    # -- jobs ---------------------------------------------------------------------------------

    def _params_ref(self, params: np.ndarray) -> Any:
        """One object-store copy per global model version (jobs of a version share the array)."""
        for arr, ref in self._params:
            if arr is params:
                return ref
        ref = self.ray.put(params)
        self._params = [(params, ref)] + self._params[:3]
        return ref

    def submit(self, jobs: Sequence[Job]) -> None:
        self._queue.extend(jobs)
        self._fill()

    def _fill(self) -> None:
        while self._queue:
            i = min(range(len(self._actors)), key=lambda k: (self._load[k], k))
            if self._load[i] >= self.cfg.inflight:
                return
            job = self._queue.popleft()
            t = job.task
            light = Job(job.id, ClientTask(t.client, None, t.version, t.round, t.dispatch, t.seed, t.config),
                        job.client_state, job.finish_time)
            fut = self._actors[i].run.remote(light, self._params_ref(t.params))
            self._futures[fut] = (i, job)
            self._load[i] += 1

    def next_result(self) -> JobResult:
        if not self._futures:
            raise RuntimeError("next_result() with no job in flight")
        ray = self.ray
        (done,), _ = ray.wait(list(self._futures), num_returns=1)
        i, job = self._futures.pop(done)
        self._load[i] -= 1
        try:
            result = ray.get(done)
        except ray.exceptions.RayActorError as exc:
            self._replace(i)
            result = JobResult(job.id, job.task.client, None, job.client_state,
                               f"Ray actor died: {_one_line(exc)}")
        except Exception as exc:  # noqa: BLE001 — a failed task is a failed job
            result = JobResult(job.id, job.task.client, None, job.client_state, f"Ray task failed: {_one_line(exc)}")
        self._fill()
        return result

    def _replace(self, i: int) -> None:
        remote = self.ray.remote(_Worker).options(num_cpus=self.cfg.num_cpus, num_gpus=self.cfg.num_gpus)
        self._actors[i] = remote.remote(self.cfg.threads)
        self._actors[i].load.remote(self._setup_ref)  # runs before any job later sent to it


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
