"""The vectorized executor: a cohort of client jobs trained in one batched computation.

The vectorized executor: every job in flight (a sync round's cohort, the async jobs
submitted so far) trains in one batched computation over stacked parameters.

A separate executor rather than an `inline` option because its contract differs: jobs are
not run one at a time but collected until a result is asked for, then trained together
in chunks (`chunk_size` bounds the memory), and only strategies with a batched client
rule (`rules.RULES`) take that path. Everything else about a job is the inline executor's:
the same resident `ClientRuntime` (data, model, device), the same per-job generator
seeded by `task.seed`, the same per-job numpy work, so the two give the same results up to
the float rounding of batched kernels (docs/how-to-scale.md gives the tolerance).
"""

from __future__ import annotations

import collections
import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any, Sequence

from fedsim.scenario.fields import bounded
from fedsim.types import Job, JobResult

log = logging.getLogger("fedsim.vectorized")


@dataclass(frozen=True, kw_only=True)
class Vectorized:
    """Train all jobs in flight together with torch.func (vmap over stacked parameters).

    Args:
        chunk_size: clients trained in one batched computation; peak memory grows
            linearly with it (parameters, momentum, gradients and one minibatch of
            activations per row). Results do not depend on it.
        threads: torch intra-op threads (1 keeps results identical across executors).
    """

    chunk_size: int = bounded(1024, ge=1, le=1_000_000)
    threads: int = bounded(1, ge=1, le=256)

    def create(self) -> "VectorizedExecutor":
        """Build the executor (the runtime itself is built in `start`)."""
        return VectorizedExecutor(self.chunk_size, self.threads)


def _failure(job: Job, exc: BaseException, t0: float) -> JobResult:
    """A failed JobResult worded as `ClientRuntime.run` words it (error text + where)."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return JobResult(job.id, job.task.client, None, job.client_state, f"{type(exc).__name__}: {exc}{where}",
                     time.perf_counter() - t0)


@dataclass
class _Live:
    """A job whose rule is suspended at an SGD request."""

    job: Job
    trainer: Any
    gen: Any
    call: Any


class VectorizedExecutor:
    """Holds submitted jobs until a result is asked for, then trains them all in chunks."""

    def __init__(self, chunk_size: int, threads: int):
        self.chunk_size, self.threads = chunk_size, threads
        self._pending: list[Job] = []
        self._done: collections.deque[JobResult] = collections.deque()
        self._inflight = 0

    def start(self, setup) -> None:
        """Build the resident runtime, the batched model and the strategy's batched rule.

        Args:
            setup: data, model spec, client config and strategy of the run.
        """
        from fedsim.executors.vectorized.batched import BatchedModel
        from fedsim.executors.vectorized.rules import rule_for
        from fedsim.training.runtime import ClientRuntime

        self.setup = setup
        self.rt = ClientRuntime(setup.data, setup.model, setup.client, setup.strategy, self.threads)
        self.rule = rule_for(setup.strategy)
        if self.rule is None:
            log.warning("vectorized executor: %s has a client rule with no batched form; its jobs run "
                        "one client at a time", type(setup.strategy).__name__)
        self.model = BatchedModel(self.rt.model.module, self.rt.regression)
        sizes = setup.data.num_examples()
        largest = int(sizes.max()) if len(sizes) else 1
        # The minibatch row length is a property of the federation, never of a chunk, so a
        # row's kernels (and their rounding) are the same whichever jobs share its chunk.
        self.width = max(1, min(setup.client.batch_size, largest))

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue jobs; nothing runs until `next_result` is called.

        Args:
            jobs: the jobs to run (a sync round's cohort, or async jobs in flight).
        """
        self._pending.extend(jobs)
        self._inflight += len(jobs)

    def next_result(self) -> JobResult:
        """One finished job's result, training every queued job together first if none is ready.

        Returns:
            A result (an update, or the client's error as a string).

        Raises:
            RuntimeError: no job is in flight.
        """
        if self._inflight == 0:
            raise RuntimeError("next_result() with no job in flight")
        if not self._done:
            jobs, self._pending = self._pending, []
            self._done.extend(self.run_jobs(jobs))
        self._inflight -= 1
        return self._done.popleft()

    def close(self) -> None:
        """Drop queued jobs and results."""
        self._pending = []

    # -- the batched path ----------------------------------------------------------------------

    def run_jobs(self, jobs: Sequence[Job]) -> list[JobResult]:
        """Results of `jobs` (in their order): batched when the strategy's rule allows it.

        Args:
            jobs: jobs in flight.

        Returns:
            One result per job; a job whose rule raises is a failed result, as inline.
        """
        if self.rule is None:
            return [self.rt.run(job) for job in jobs]
        from fedsim.training.runtime import LocalTrainer

        t0 = time.perf_counter()
        results: dict[int, JobResult] = {}
        live: list[_Live] = []
        for job in jobs:
            try:
                trainer = LocalTrainer(self.rt, job.task)
                gen = self.rule(self.setup.strategy, job.task, trainer, job.client_state)
                self._advance(_Live(job, trainer, gen, None), None, live, results, t0)
            except Exception as exc:  # noqa: BLE001 — a client failure must not stop the server
                results[job.id] = _failure(job, exc, t0)
        while live:  # each pass fulfils every suspended rule's current SGD request at once
            batch, live = live, []
            try:
                outs = self._train([x.call for x in batch], [x.trainer for x in batch])
            except Exception as exc:  # noqa: BLE001 — e.g. out of memory: these jobs fail, the run goes on
                for x in batch:
                    results[x.job.id] = _failure(x.job, exc, t0)
                continue
            for x, out in zip(batch, outs, strict=True):
                self._advance(x, out, live, results, t0)
        per_job = (time.perf_counter() - t0) / max(len(jobs), 1)
        return [_with_time(results[job.id], per_job) for job in jobs]

    def _advance(self, x: _Live, value: Any, live: list[_Live], results: dict[int, JobResult], t0: float) -> None:
        """Resume a rule with `value`; it suspends at its next SGD request or finishes."""
        try:
            x.call = x.gen.send(value)
            live.append(x)
        except StopIteration as stop:
            update, state = stop.value
            results[x.job.id] = JobResult(x.job.id, x.job.task.client, update, state, None, 0.0)
        except Exception as exc:  # noqa: BLE001 — a client failure must not stop the server
            results[x.job.id] = _failure(x.job, exc, t0)

    def _train(self, calls: list[Any], trainers: list[Any]) -> list[tuple[Any, float]]:
        from fedsim.executors.vectorized.batched import run_calls

        data = self.setup.data
        clients = [t.task.client for t in trainers]
        return run_calls(self.model, self.rt.x_train, self.rt.y_train, calls, [t.generator for t in trainers],
                         [t.num_examples for t in trainers], [int(data.train_offsets[c]) for c in clients],
                         self.setup.client.batch_size, self.width, self.chunk_size)


def _with_time(result: JobResult, seconds: float) -> JobResult:
    return JobResult(result.id, result.client, result.update, result.client_state, result.error,
                     result.wall_seconds or seconds)


__all__ = ["Vectorized", "VectorizedExecutor"]
