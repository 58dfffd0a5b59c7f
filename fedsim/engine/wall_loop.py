"""Async mode on the wall clock (`engine.clock: wall`): real clients decide the order.

The virtual-clock loop (fedsim.engine.async_loop.AsyncLoop) fixes every job's arrival time at
dispatch from the system model, so the history never depends on which client is faster.
A deployed async run wants the opposite: the update that really arrives first is the one
committed first. This loop reuses the virtual loop's dispatch policy, strategy calls
(`receive`, `tick`), commits, evaluations and stop conditions, and changes only where
times come from:

  * the clock is the seconds since the run started (`time.monotonic`);
  * a job's finish/arrival times are not drawn from the system model, and its simulated
    dropout, crash or straggler timeout (`system`, `faults`) is not applied: the job is
    submitted at once and arrives when the executor returns its result
    (`executor.next_result()`), in that order (update corruption faults still apply);
  * strategy ticks (FedFix), timed evaluations and participation slots fire at their
    real times; `max_time` counts real seconds;
  * a job that never comes back is a drop when the executor reports it failed (the gRPC
    executor does so after its job timeout); a result that comes back after the run
    stopped is ignored.

Executors that offer `poll(timeout) -> JobResult | None` (the gRPC executor) let the loop
wake for a timer while jobs are in flight; with the others, a timer due while the loop
waits for a result fires when that result comes in. Event records keep the field name
`virtual_time` (the engine's clock), which here holds wall seconds since the start.
"""

from __future__ import annotations

import heapq
import time
from typing import Any, Callable

import numpy as np

from fedsim.engine.async_loop import MAX_IDLE_SLOTS, SLOT, TICK, AsyncLoop, Flight
from fedsim.types import JobResult


class WallLoop(AsyncLoop):
    """`AsyncLoop` with real arrival order and real times (see the module docstring)."""

    def __init__(self, eng: Any, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(eng)
        self._clock, self._sleep = clock, sleep
        self.t0 = 0.0

    def elapsed(self) -> float:
        """Wall seconds since the run started.

        Returns:
            The elapsed time, the loop's `now`.
        """
        return self._clock() - self.t0

    def run(self) -> np.ndarray:
        """Run until a stop condition, committing updates in the order they really come back.

        Returns:
            The final model parameters.

        Raises:
            Stalled: when the run cannot make progress any more.
        """
        eng, cfg = self.eng, self.cfg
        self.t0 = self._clock()
        eng.now = 0.0
        self.begin()
        while not self.finished():
            limit = self.heap[0][0] if self.heap else None
            if cfg.max_time is not None:
                limit = cfg.max_time if limit is None else min(limit, cfg.max_time)
            if self.flights:
                result = self.wait(limit)
            elif limit is not None:  # nothing in flight: sleep until the next timer
                self._sleep(max(0.0, limit - self.elapsed()))
                result = None
            else:
                break  # nothing in flight and no timer: nothing can happen any more
            eng.now = max(eng.now, self.elapsed())
            if cfg.max_time is not None and eng.now >= cfg.max_time:
                break  # a result that came in after the deadline is not committed
            while self.heap and self.heap[0][0] <= eng.now and not self.finished():
                _, prio, key = heapq.heappop(self.heap)
                if prio == TICK:
                    self.on_tick(key)
                elif prio == SLOT:
                    self.on_slot(key)
                else:
                    self.on_eval(key)
            if self.idle_slots > MAX_IDLE_SLOTS:
                break  # nobody came online for a long time and nothing is in flight
            if result is not None and not self.finished():
                self.on_result(result)
            if not self.finished():
                self.refill()
                self.check_stall()
            self.flush()
            self.avail.forget_before(eng.now)
        if self.last_eval != (eng.version, eng.now):
            record = self.evaluate()
            if eng.on_progress:
                eng.on_progress(eng.version, record)
        return eng.params

    def wait(self, limit: float | None) -> JobResult | None:
        """The next result the executor returns, or None when `limit` passes first.

        Args:
            limit: the run time (seconds since the start) to wait until; None = no limit.

        Returns:
            The result, or None on timeout.
        """
        poll = getattr(self.eng.executor, "poll", None)
        if poll is None:
            return self.eng.executor.next_result()
        return poll(None if limit is None else max(0.0, limit - self.elapsed()))

    def start(self, client: int) -> None:
        """Dispatch `client` now; the job arrives whenever its result really comes back.

        Args:
            client: the client.
        """
        eng = self.eng
        p = eng.dispatch(client, eng.now, eng.version)
        p.dropped = None  # simulated dropouts/faults belong to the virtual clock
        self.flights[p.job.id] = Flight(p, eng.params)
        self.to_submit.append(p.job)
        self.busy[client] = True
        self.idle_slots = 0

    def on_result(self, r: JobResult) -> None:
        """Handle one result as it comes back: drop it, or hand its update to the strategy.

        Args:
            r: the executor's result (ignored when its job is no longer in flight).
        """
        eng = self.eng
        f = self.flights.pop(r.id, None)
        if f is None:
            return  # not a job of ours in flight (already given up)
        p = f.pending
        p.finish = p.arrive = eng.now  # the real arrival time
        if self.cfg.drop_offline and self.avail.first_offline(p.client, p.start, eng.now) is not None:
            eng.reject(p, "offline", eng.now)
            self.release(p.client, arrived=False)
            return
        update = eng.accept(p, r)  # logs the drop itself when failed, timed out or invalid
        if update is None:
            self.release(p.client, arrived=False)
            return
        self.deliver(f, update)
