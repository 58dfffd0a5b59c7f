"""The inline executor: jobs run in this process, serially or on a pool of threads.

`workers: 0` runs each job serially in the caller's thread; `workers: n` uses n threads, each
with its own resident model (torch releases the GIL during kernels).
"""

from __future__ import annotations

import collections
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from fedsim.errors import RunError
from fedsim.scenario.fields import bounded
from fedsim.types import Job, JobResult


@dataclass(frozen=True, kw_only=True)
class Inline:
    """Run client jobs in the calling process.

    Args:
        workers: 0 = run each job in the calling thread when its result is asked for;
            n > 0 = a pool of n threads.
        threads: torch intra-op threads per worker (1 keeps results identical across executors).
    """

    workers: int = bounded(0, ge=0, le=256)
    threads: int = bounded(1, ge=1, le=256)

    def create(self) -> "InlineExecutor":
        """Build the executor with these settings (no work starts before `start`)."""
        return InlineExecutor(self.workers, self.threads)


class InlineExecutor:
    """Runs jobs in this process: lazily in the caller's thread, or on a thread pool.

    Each thread builds its own resident `ClientRuntime` on its first job.

    Args:
        workers: 0 = run a job when its result is asked for; n > 0 = a pool of n threads.
        threads: torch intra-op threads per runtime.
    """
    def __init__(self, workers: int, threads: int):
        self.workers, self.threads = workers, threads
        self._pending: collections.deque[Job] = collections.deque()
        self._done: queue.Queue[JobResult | BaseException] = queue.Queue()
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._inflight = 0

    def start(self, setup) -> None:
        """Keep the setup and, with workers > 0, start the thread pool."""
        self.setup = setup
        if self.workers > 0:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fedsim-client")

    def _runtime(self):
        rt = getattr(self._local, "runtime", None)
        if rt is None:
            from fedsim.training.runtime import ClientRuntime

            s = self.setup
            rt = self._local.runtime = ClientRuntime(s.data, s.model, s.client, s.strategy, self.threads)
        return rt

    def _run(self, job: Job) -> None:
        # ClientRuntime.run turns a failing client job into a failed JobResult; anything that
        # fails around it (building the runtime: bad model spec, out of memory) is a setup
        # error. It must reach the caller: a pool thread that died silently would leave
        # next_result() waiting forever.
        try:
            result: JobResult | BaseException = self._runtime().run(job)
        except Exception as exc:  # noqa: BLE001 — re-raised in the caller's thread
            result = exc
        self._done.put(result)

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue the jobs (serial) or hand them to the pool."""
        for job in jobs:
            self._inflight += 1
            if self._pool is not None:
                self._pool.submit(self._run, job)
            else:
                self._pending.append(job)

    def next_result(self) -> JobResult:
        """Return one finished job's result (serial: run the oldest queued job now).

        Raises:
            RuntimeError: no job is in flight.
            RunError: building a runtime or another step outside the client job failed.
        """
        if self._inflight == 0:
            raise RuntimeError("next_result() with no job in flight")
        if self._pool is None:
            self._run(self._pending.popleft())
        self._inflight -= 1
        result = self._done.get()
        if isinstance(result, BaseException):
            raise RunError(f"executor: a worker failed outside any client job: "
                           f"{type(result).__name__}: {result}") from result
        return result

    def close(self) -> None:
        """Shut the pool down, cancelling jobs not yet started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
