"""The `ray` executor: a pool of Ray actors, each holding a resident `ClientRuntime`.

Each actor keeps its runtime (model, flat parameter buffer and every client's data), so a job costs one parameter
copy in and one out. The run's `Setup` is put in the object store once; each global
model version is put once and shared by every job of that version; results come back
as they finish (`ray.wait`). Per-client state travels in the Job and JobResult and is
stored by the engine, so any actor can run any client.

`import ray` happens only when the executor starts.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from fedsim.errors import RunError
from fedsim.scenario.fields import bounded
from fedsim.types import ClientTask, Job, JobResult


def verbose() -> bool:
    """Whether FEDSIM_VERBOSE is set (to anything but 0): then Ray's logs are not silenced."""
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
        warmup_inline: run jobs in the driver until the actors are ready (hides Ray's
            start-up; results are identical either way).
    """

    address: str | None = None
    actors: int | None = bounded(None, ge=1, le=100_000)
    num_cpus: float = bounded(1.0, ge=0.0, le=1024)
    num_gpus: float = bounded(0.0, ge=0.0, le=64)
    threads: int = bounded(1, ge=1, le=256)
    inflight: int = bounded(2, ge=1, le=64)
    warmup_inline: bool = True

    def create(self) -> "RayExecutor":
        """Build the executor; Ray starts in a background thread right away."""
        return RayExecutor(self)


class _Worker:
    """Actor body: one resident ClientRuntime serving any client."""

    def __init__(self, threads: int):
        import torch  # noqa: F401 — the slow import happens while the driver builds the data

        import fedsim.training.runtime  # noqa: F401

        self.threads = threads
        self.rt: Any = None

    def load(self, setup: Any) -> bool:
        from fedsim.training.runtime import ClientRuntime

        self.rt = ClientRuntime(setup.data, setup.model, setup.client, setup.strategy, self.threads)
        return True

    def run(self, job: Job, params: np.ndarray) -> JobResult:
        t = job.task
        task = ClientTask(t.client, np.array(params, copy=True), t.version, t.round, t.dispatch, t.seed, t.down,
                          t.lr_step)
        return self.rt.run(Job(job.id, task, job.client_state, job.finish_time))


class RayExecutor:
    """Runs jobs on a pool of Ray actors with resident runtimes, started in the background.

    Ray starts in a background thread as soon as the executor is created, so its start-up
    overlaps the driver's data loading. With `warmup_inline`, the driver runs queued jobs
    itself until the actors have loaded the setup, so Ray's start-up costs no waiting;
    results are the same whoever runs a job (same seeds, one torch thread each).

    Args:
        cfg: the `ray` executor settings.

    Raises:
        RunError: (from `start`, `submit` or `next_result`) Ray cannot start or reach the
            cluster, the actors do not fit its resources, or an actor fails to load the setup.
    """

    def __init__(self, cfg: Ray):
        self.cfg = cfg
        self.ray: Any = None
        self._owns_cluster = False
        self._actors: list[Any] = []
        self._load: list[int] = []  # jobs queued per actor
        self._loaded: list[bool] = []  # actor has built its runtime
        self._loading: dict[Any, int] = {}  # load ObjectRef -> actor index
        self._queue: collections.deque[Job] = collections.deque()
        self._futures: dict[Any, tuple[int, Job]] = {}  # ObjectRef -> (actor index, job)
        self._params: list[tuple[np.ndarray, Any]] = []  # recent (params array, ObjectRef)
        self._setup: Any = None
        self._setup_ref: Any = None
        self._local: Any = None  # the driver's own ClientRuntime (warm-up)
        self._active = False
        self._boot_error: BaseException | None = None
        if cfg.num_gpus > 0 and not (cfg.address or os.environ.get("RAY_ADDRESS")):
            import torch

            visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if visible < cfg.num_gpus:  # say so before starting a local cluster for nothing
                raise RunError(f"executor.num_gpus={cfg.num_gpus:g} per client but {visible} GPU(s) "
                               "visible here; use num_gpus: 0 (CPU) or at most the number of GPUs")
        self._booted, self._release = threading.Event(), threading.Event()
        self._boot = threading.Thread(target=self._boot_safely, name="fedsim-ray-boot", daemon=True)
        self._boot.start()

    # -- lifecycle ----------------------------------------------------------------------------

    def _boot_safely(self) -> None:
        try:
            self._start_ray()
        except BaseException as exc:  # noqa: BLE001 — re-raised in the driver thread
            self._boot_error = exc
        finally:
            self._booted.set()
        # Ray ties the processes it starts to the life of the *thread* that started them
        # (parent-death signal), so this thread lives until close() has shut Ray down.
        self._release.wait()

    def _start_ray(self) -> None:
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
                with _lean_local_cluster(ray, enabled=not address and not verbose()):
                    ray.init(**kwargs)
            except Exception as exc:  # noqa: BLE001
                where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
                raise RunError(f"executor ray: cannot start or reach {where}: {_one_line(exc)}") from None
            self._owns_cluster = True
        n = self._pool_size(ray.cluster_resources())
        remote = ray.remote(_Worker).options(num_cpus=self.cfg.num_cpus, num_gpus=self.cfg.num_gpus)
        self._actors = [remote.remote(self.cfg.threads) for _ in range(n)]
        self._load = [0] * n
        self._loaded = [False] * n

    def start(self, setup: Any) -> None:
        """Keep the setup; without `warmup_inline`, wait until every actor has loaded it.

        Raises:
            RunError: Ray could not start, or an actor failed to load the setup.
        """
        self._setup = setup
        if not self.cfg.warmup_inline:
            self._booted.wait()
            self._activate()
            try:
                self.ray.get(list(self._loading))
            except Exception as exc:  # noqa: BLE001
                self.close()
                raise RunError(f"executor ray: actors failed to start: {_one_line(exc)}") from None
            self._loaded = [True] * len(self._actors)
            self._loading = {}

    def _activate(self) -> None:
        """Once Ray is up: share the setup, have every actor build its runtime."""
        if self._active or not self._booted.is_set():
            return
        if self._boot_error is not None:
            err, self._boot_error = self._boot_error, None
            raise err
        self._setup_ref = self.ray.put(self._setup)
        self._loading = {a.load.remote(self._setup_ref): i for i, a in enumerate(self._actors)}
        self._active = True

    def _poll_loading(self) -> None:
        if not self._loading:
            return
        done, _ = self.ray.wait(list(self._loading), num_returns=len(self._loading), timeout=0)
        for ref in done:
            i = self._loading.pop(ref)
            try:
                self.ray.get(ref)
                self._loaded[i] = True
            except Exception as exc:  # noqa: BLE001

                raise RunError(f"executor ray: actor {i} failed to start: {_one_line(exc)}") from None

    def _pool_size(self, resources: dict[str, float]) -> int:
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
        """Kill the actors and, if this executor started the local cluster, shut it down."""
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
        self._actors, self._futures, self._params, self._loading = [], {}, [], {}
        if self._owns_cluster and ray.is_initialized():
            _kill_helpers(ray)
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
        """Queue the jobs (longest first) and hand as many as fit to the ready actors."""
        self._queue.extend(jobs)
        if len(self._queue) > 1 and self._setup is not None:
            from fedsim.executors import longest_first

            self._queue = collections.deque(longest_first(self._queue, self._setup))
        self._activate()
        self._poll_loading()
        self._fill()

    def _fill(self) -> None:
        ready = [i for i, ok in enumerate(self._loaded) if ok]
        while self._queue and ready:
            i = min(ready, key=lambda k: (self._load[k], k))
            if self._load[i] >= self.cfg.inflight:
                return
            job = self._queue.popleft()
            t = job.task
            light = Job(job.id, ClientTask(t.client, None, t.version, t.round, t.dispatch, t.seed, t.down, t.lr_step),
                        job.client_state, job.finish_time)
            fut = self._actors[i].run.remote(light, self._params_ref(t.params))
            self._futures[fut] = (i, job)
            self._load[i] += 1

    def next_result(self) -> JobResult:
        """Return one finished job's result, running jobs in the driver while the actors warm up.

        Raises:
            RuntimeError: no job is queued or in flight.
            RunError: Ray or an actor failed outside any client job.
        """
        if not self._futures and not self._queue:
            raise RuntimeError("next_result() with no job in flight")
        while True:
            self._activate()
            self._poll_loading()
            self._fill()
            warming = not self._active or bool(self._loading)
            if self._futures:
                wait_on = list(self._futures) + (list(self._loading) if warming else [])
                timeout = 0 if (warming and self._queue) else (0.05 if not self._active else None)
                done, _ = self.ray.wait(wait_on, num_returns=1, timeout=timeout)
                if done and done[0] in self._futures:
                    return self._collect(done[0])
                if done:
                    continue  # an actor finished loading: give it work
            if self._queue and warming:
                return self._run_here(self._queue.popleft())
            if not self._futures and not self._queue:
                raise RuntimeError("next_result() with no job in flight")
            if not self._active:
                self._booted.wait(0.05)

    def _run_here(self, job: Job) -> JobResult:
        """Run a job in the driver while the actors warm up."""
        if self._local is None:
            from fedsim.training.runtime import ClientRuntime

            s = self._setup
            self._local = ClientRuntime(s.data, s.model, s.client, s.strategy, self.cfg.threads)
        return self._local.run(job)

    def _collect(self, done: Any) -> JobResult:
        ray = self.ray
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


_HELPERS = ("start_monitor", "start_log_monitor", "start_api_server")
_NODE_PATCH_LOCK = threading.Lock()  # two executors booting at once patch Ray's class in turn


@contextlib.contextmanager
def _lean_local_cluster(ray: Any, enabled: bool) -> Iterator[None]:
    """Skip a private local cluster's unused helper processes while `ray.init` starts it.

    Those are the autoscaler monitor (fixed resources), the log monitor (worker logs are
    not forwarded unless --verbose) and the dashboard API server (no job submission, no
    state API). `ray.init` has no switch for them; on 2 cores they cost ~1 s of start-up and
    several CPU-seconds beside the driver. Ray's node class is restored on exit; on a Ray
    whose node class lacks these methods the cluster simply starts in full.
    """
    node_cls = getattr(getattr(getattr(ray, "_private", None), "node", None), "Node", None)
    saved = {name: node_cls.__dict__.get(name) for name in _HELPERS} if node_cls is not None else {}
    if not enabled or not saved or None in saved.values():
        yield
        return
    with _NODE_PATCH_LOCK:
        try:
            for name in _HELPERS:
                setattr(node_cls, name, _skip_helper)
            yield
        finally:
            for name, method in saved.items():
                setattr(node_cls, name, method)


def _skip_helper(self: Any, *args: Any, **kwargs: Any) -> None:
    return None


def _kill_helpers(ray: Any) -> None:
    """SIGKILL the helper processes of a local cluster we started, before `ray.shutdown()`.

    These are the autoscaler monitor, log monitor and dashboard API server: `ray.shutdown()`
    asks each to stop and waits up to a second for it, about 1.2 s per run on 2 cores, though
    none holds state the run needs. The raylet and GCS still stop gracefully (the raylet reaps
    its workers). Needs Ray's node handle; on a Ray version without it, shutdown is simply
    slower.
    """
    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    procs = getattr(node, "all_processes", None)
    if not isinstance(procs, dict):
        return
    for kind in ("monitor", "log_monitor", "dashboard"):
        for info in procs.get(kind, ()):
            proc = getattr(info, "process", None)
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
