"""Asynchronous mode of the engine: a discrete-event loop on the virtual clock.

Every job's virtual timeline (finish, arrival, or drop) is fixed when it is dispatched,
from the system model and the participation process. Jobs are submitted to the executor
as soon as they are dispatched, so many run at once; the loop then handles events in
virtual-time order and, to handle an arrival, waits for *that* job's result, buffering
results that the executor returns early. Hence the history never depends on which
worker finished first. Design notes: docs/explanation-virtual-clock.md.

Event order at equal virtual times (then by dispatch index / tick number):
  finish (log only) < arrival or drop < strategy tick < participation slot < timed eval.

Dispatch policy (`engine.redispatch`):
  * `sample` (FedBuff's setting: Nguyen et al., "Federated Learning with Buffered
    Asynchronous Aggregation", AISTATS 2022, Alg. 1): keep `concurrency` jobs in flight; a
    freed slot is refilled at once with a client drawn uniformly from the online, idle
    clients, from the stream ("sampling", dispatch index).
  * `on_commit` (the schedules of Fraboni, Vidal, Kameni, Lorenzi, "A General Theory for
    Federated Optimization with Asynchronous and Heterogeneous Clients Updates", JMLR 2023,
    for asynchronous FedAvg, FedBuff and FedFix): a client whose update arrived
    idles until the next server commit and then restarts from the new model (Async: at
    once; FedBuff-c: at the K-th arrival; FedFix: at the next tick). Capacity that frees
    up otherwise (drops, offline clients) is refilled as in `sample`.

Staleness = server version when the update arrives − version the client downloaded.
Only model versions still referenced by in-flight jobs are kept (each job holds its
start model).

Checkpoints (`checkpoint.every: N`, fedsim.engine.checkpoint): at the end of the event that made
the version cross a multiple of N — after its dispatches were submitted — the loop's own
state (event heap, in-flight jobs with their start models, busy/waiting clients, the
cached participation masks, timers) is saved with the engine's. Results the executor had
already returned are not saved: on resume every in-flight job is submitted again, and
since a job's result is a deterministic function of the job, the run continues exactly.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim import seeding
from fedsim.engine import checkpoint
from fedsim.errors import Stalled
from fedsim.strategy.contracts import hook, modes, supports_async
from fedsim.types import ArrivalInfo, JobResult

# event priorities at equal virtual time
FINISH, ARRIVE, TICK, SLOT, EVAL = 0, 1, 2, 3, 4

# Stop when no job is in flight and nobody came online for this many participation slots
# (e.g. a trace that has ended): the run cannot make progress any more.
MAX_IDLE_SLOTS = 100_000


class Availability:
    """Participation masks per slot, drawn sequentially from the process and cached.

    Every slot is drawn once, in order, so looking ahead — to know whether a client goes
    offline during a job — does not change the draws.

    Args:
        process: the participation process (`online(step, time)` -> mask).
        slot: the slot length in virtual seconds.
    """

    def __init__(self, process: Any, slot: float):
        self.process, self.slot = process, slot
        self.masks: dict[int, np.ndarray] = {}
        self.next_step = 0
        self.oldest = 0

    def slot_of(self, t: float) -> int:
        """The participation slot that contains virtual time `t`.

        Args:
            t: a virtual time.

        Returns:
            ⌊t / slot⌋ (robust to float rounding at the boundary).
        """
        return int(math.floor(t / self.slot + 1e-9))

    def mask(self, k: int) -> np.ndarray:
        """The online mask of slot `k`, drawing every earlier slot first.

        Args:
            k: the slot index.

        Returns:
            A boolean (N,) mask.
        """
        while self.next_step <= k:
            self.masks[self.next_step] = np.asarray(
                self.process.online(self.next_step, self.next_step * self.slot), dtype=bool)
            self.next_step += 1
        return self.masks[k]

    def at(self, t: float) -> np.ndarray:
        """The online mask at virtual time `t`.

        Args:
            t: a virtual time.

        Returns:
            A boolean (N,) mask.
        """
        return self.mask(self.slot_of(t))

    def first_offline(self, client: int, start: float, end: float) -> float | None:
        """The first slot boundary b with start < b < end at which `client` is offline.

        Args:
            client: the client.
            start: the job's dispatch time.
            end: the job's arrival time.

        Returns:
            That boundary, or None when the client stays online.
        """
        k = self.slot_of(start) + 1
        while k * self.slot < end:
            if not self.mask(k)[client]:
                return k * self.slot
            k += 1
        return None

    def forget_before(self, t: float) -> None:
        """Drop the cached masks of the slots before the one containing `t`.

        Args:
            t: the oldest virtual time still needed.
        """
        keep = self.slot_of(t)
        while self.oldest < keep:
            self.masks.pop(self.oldest, None)
            self.oldest += 1


@dataclass
class Flight:
    """A dispatched job: its fixed timeline, and the (clean) server model it started from.

    Attributes:
        pending: the job and its timeline (`fedsim.engine.state.Pending`).
        base: the server model at dispatch (shared by every job of that version).
        drop_at: the virtual time the server learns of a drop, else None.
    """

    pending: Any  # fedsim.engine.Pending
    base: np.ndarray  # server params at dispatch (shared by every job of that version)
    drop_at: float | None = None


class AsyncLoop:
    """The discrete-event loop of asynchronous mode on the virtual clock.

    Args:
        eng: a `fedsim.engine.Engine`; the loop uses its dispatch/accept/reject/evaluate
            machinery, counters, params, state and version.
    """

    def __init__(self, eng: Any):
        self.eng = eng
        self.cfg = eng.sc.engine
        self.strategy = eng.strategy
        self.heap: list[tuple[float, int, int]] = []
        self.flights: dict[int, Flight] = {}
        self.results: dict[int, JobResult] = {}  # results the executor returned early
        self.busy = np.zeros(eng.n, dtype=bool)  # in flight or waiting for a commit
        self.waiting: list[int] = []  # on_commit: clients whose update arrived, until the next commit
        self.avail = Availability(eng.participation, self.cfg.slot)
        self.to_submit: list[Any] = []
        self.wake_slot: int | None = None
        self.idle_slots = 0
        self.since_commit = 0
        self.fail_streak = 0  # arrivals in a row that brought no usable update
        self.last_eval: tuple[int, float] | None = None
        m = eng.sc.metrics
        self.eval_every_time = m.eval_every_time
        # async: evaluate every `eval_every` versions; unset = 1 unless timed evaluation is on
        self.eval_every = m.eval_every if m.eval_every is not None else (None if m.eval_every_time else 1)
        if not supports_async(self.strategy):
            raise ValueError(f"async mode needs a strategy that declares modes containing 'async'; "
                             f"{type(self.strategy).__name__} declares {modes(self.strategy) or 'none'}")
        # a TimedStrategy (one with tick) commits every commit_interval of virtual time
        self.interval = self.strategy.commit_interval if hook(self.strategy, "tick") else None
        self.checkpoint_every = getattr(eng, "checkpoint_every", None)
        self.saved_version = eng.version  # the version of the last checkpoint (or of the start)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> np.ndarray:
        """Run events in virtual-time order until a stop condition.

        Returns:
            The final model.

        Raises:
            Stalled: when the run cannot make progress any more.
            RunError: for a client error when `engine.on_client_error` is `raise`.
        """
        eng, cfg = self.eng, self.cfg
        resumed = getattr(eng, "resume_loop", None)
        if resumed is not None:  # continue from a checkpoint (fedsim.engine.checkpoint.restore)
            self.load_state(resumed)
        else:
            self.begin()
        while not self.finished() and self.heap:
            t, prio, key = heapq.heappop(self.heap)
            if cfg.max_time is not None and t > cfg.max_time:
                eng.now = cfg.max_time
                break
            eng.now = max(eng.now, t)
            if prio == FINISH:
                self.on_finish(key)
            elif prio == ARRIVE:
                self.on_arrive(key)
            elif prio == TICK:
                self.on_tick(key)
            elif prio == SLOT:
                self.on_slot(key)
                if self.idle_slots > MAX_IDLE_SLOTS:
                    break
            else:
                self.on_eval(key)
            if not self.finished():
                self.refill()
                self.check_stall()
            self.flush()
            self.avail.forget_before(eng.now)
            self.maybe_checkpoint()
        if not self.heap and not self.finished() and cfg.max_time is not None:
            eng.now = max(eng.now, cfg.max_time)  # nothing left to happen before the deadline
        if self.last_eval != (eng.version, eng.now):
            record = self.evaluate()
            if eng.on_progress:
                eng.on_progress(eng.version, record)
        return eng.params

    # -- checkpoints ------------------------------------------------------------------------

    def maybe_checkpoint(self) -> None:
        """Save after every `checkpoint.every`-th version, at the end of an event.

        Every dispatch of that event has been submitted, so nothing is half done.
        """
        ck, v = self.checkpoint_every, self.eng.version
        if ck and v // ck > self.saved_version // ck and not self.finished():
            self.saved_version = v
            checkpoint.save(self.eng, v, loop=self.state())

    def state(self) -> dict[str, Any]:
        """The loop's mutable state, pickled together with the engine's by fedsim.engine.checkpoint.

        In-flight jobs share their start models, and pickle keeps that sharing.

        Returns:
            A picklable dict.
        """
        return {
            "heap": list(self.heap), "flights": dict(self.flights), "busy": self.busy.copy(),
            "waiting": list(self.waiting), "masks": dict(self.avail.masks),
            "next_step": self.avail.next_step, "oldest": self.avail.oldest,
            "wake_slot": self.wake_slot, "idle_slots": self.idle_slots,
            "since_commit": self.since_commit, "last_eval": self.last_eval,
            "saved_version": self.saved_version,
        }

    def load_state(self, s: dict[str, Any]) -> None:
        """Restore `state()` into this fresh loop and submit every in-flight job again.

        The executor is new; its results are deterministic functions of the jobs.

        Args:
            s: a dict from `state()`.
        """
        self.heap = list(s["heap"])
        heapq.heapify(self.heap)
        self.flights = dict(s["flights"])
        self.busy = np.asarray(s["busy"], dtype=bool).copy()
        self.waiting = list(s["waiting"])
        self.avail.process = self.eng.participation  # restored from the same snapshot
        self.avail.masks, self.avail.next_step = dict(s["masks"]), int(s["next_step"])
        self.avail.oldest = int(s["oldest"])
        self.wake_slot, self.idle_slots = s["wake_slot"], int(s["idle_slots"])
        self.since_commit, self.last_eval = int(s["since_commit"]), s["last_eval"]
        self.saved_version = int(s["saved_version"])
        self.results = {}
        self.to_submit = [f.pending.job for _, f in sorted(self.flights.items()) if self.eng.computes(f.pending)]
        self.flush()

    def begin(self) -> None:
        """Evaluate the initial model, schedule the first tick and timed evaluation, fill the capacity.

        Shared by the virtual and the wall-clock loops.
        """
        self.evaluate()
        if self.interval is not None:
            self.push(self.interval, TICK, 1)
        if self.eval_every_time is not None:
            self.push(self.eval_every_time, EVAL, 1)
        self.refill()
        self.flush()

    def check_stall(self) -> None:
        """Raise when every slot is held by a client waiting for a commit that nothing can trigger.

        E.g. on_commit with a buffer larger than the concurrency: no job in flight, no timer.

        Raises:
            Stalled: in that case.
        """
        if self.waiting and not self.flights and self.interval is None \
                and (len(self.waiting) >= self.cfg.concurrency or self.busy.all()):
            raise Stalled(f"stalled at virtual time {self.eng.now:g}: {len(self.waiting)} client(s) wait for "
                          "a commit that no further arrival can trigger (with engine.redispatch: on_commit, "
                          "engine.concurrency must let the strategy's buffer fill)")

    def finished(self) -> bool:
        """Whether a version or update-count stop condition is reached.

        Returns:
            True when the run should stop.
        """
        cfg, eng = self.cfg, self.eng
        return ((cfg.max_versions is not None and eng.version >= cfg.max_versions)
                or (cfg.max_updates is not None and eng.counters.num_updates >= cfg.max_updates))

    def push(self, t: float, prio: int, key: int) -> None:
        """Schedule an event.

        Args:
            t: its virtual time.
            prio: its kind's priority at equal times (FINISH < ARRIVE < TICK < SLOT < EVAL).
            key: the job id, tick or slot number.
        """
        heapq.heappush(self.heap, (t, prio, key))

    # -- dispatch -------------------------------------------------------------------------

    def start(self, client: int) -> None:
        """Dispatch `client` now from the current model; its whole timeline is fixed here.

        Args:
            client: the client.
        """
        eng = self.eng
        p = eng.dispatch(client, eng.now, eng.version)
        flight = Flight(p, eng.params)
        if p.dropped is not None:
            flight.drop_at = p.arrive  # the server notices a dropout when the upload is due
        elif self.cfg.drop_offline:
            off = self.avail.first_offline(client, p.start, p.arrive)
            if off is not None:
                p.dropped, flight.drop_at = "offline", off
        if p.dropped is None:
            self.push(p.finish, FINISH, p.job.id)
            self.push(p.arrive, ARRIVE, p.job.id)
            if eng.computes(p):  # a lost upload of a stateless client is never computed
                self.to_submit.append(p.job)
        else:
            self.push(flight.drop_at, ARRIVE, p.job.id)  # a dropped job is never computed
        self.flights[p.job.id] = flight
        self.busy[client] = True
        self.idle_slots = 0

    def refill(self) -> None:
        """Fill free capacity with online, idle clients.

        All of them, in id order, when they fit; otherwise a uniform sample from the stream
        keyed by the dispatch index.
        """
        eng = self.eng
        free = self.cfg.concurrency - len(self.flights) - len(self.waiting)
        if free <= 0:
            return
        eligible = np.flatnonzero(self.avail.at(eng.now) & ~self.busy)
        if len(eligible) > free:
            rng = seeding.rng(eng.root, "sampling", eng.counters.dispatches)
            eligible = np.sort(rng.choice(eligible, free, replace=False))
        for c in eligible:
            self.start(int(c))
        if len(eligible) < free and not self.busy.all():
            # idle clients exist but are offline: look again at the next participation slot
            k = self.avail.slot_of(eng.now) + 1
            if self.wake_slot is None or self.wake_slot < k:
                self.wake_slot = k
                self.push(k * self.cfg.slot, SLOT, k)

    def flush(self) -> None:
        """Submit the jobs dispatched since the last flush to the executor."""
        if self.to_submit:
            self.eng.executor.submit(self.to_submit)
            self.to_submit = []

    def release(self, client: int, arrived: bool) -> None:
        """Free `client` after its job ended (on_commit: an arrived client waits for the next commit).

        Args:
            client: the client.
            arrived: whether its update was accepted.
        """
        if arrived and self.cfg.redispatch == "on_commit":
            self.waiting.append(client)  # stays busy until the next commit
        else:
            self.busy[client] = False

    # -- event handlers -------------------------------------------------------------------

    def on_finish(self, job: int) -> None:
        """Log the `finish` event of job `job` (its compute is done).

        Args:
            job: the job id.
        """
        eng = self.eng
        f = self.flights.get(job)
        if f is None:
            return
        p = f.pending
        eng.event("finish", client=p.client, job=job, virtual_time=p.finish, version=eng.version,
                  staleness=eng.version - p.job.task.version)

    def result_of(self, job: int) -> JobResult:
        """Block until `job`'s result is in, keeping any others that come back first.

        Args:
            job: the job id.

        Returns:
            Its result.
        """
        while job not in self.results:
            r = self.eng.executor.next_result()
            self.results[r.id] = r
        return self.results.pop(job)

    def on_arrive(self, job: int) -> None:
        """Handle the arrival (or the drop) of job `job`: reject it, or deliver its update.

        Args:
            job: the job id.

        Raises:
            RunError: for a client error when `engine.on_client_error` is `raise`.
            Stalled: after `engine.max_failed_streak` failed jobs in a row.
        """
        eng = self.eng
        f = self.flights.pop(job)
        p = f.pending
        if p.dropped is not None:
            eng.reject(p, p.dropped, f.drop_at)
            self.release(p.client, arrived=False)
            self.failed()
            return
        result = self.result_of(job) if eng.computes(p) else None
        update = eng.accept(p, result)  # logs the drop itself when rejected
        if update is None:
            self.release(p.client, arrived=False)
            self.failed()
            return
        self.fail_streak = 0
        self.deliver(f, update)

    def failed(self) -> None:
        """Count a failed job and stop a run that can no longer make progress.

        When every client drops out or crashes, versions never advance and, without
        `max_time`, the event loop would go on forever.

        Raises:
            Stalled: after `engine.max_failed_streak` failed jobs in a row.
        """
        self.fail_streak += 1
        limit = getattr(self.cfg, "max_failed_streak", None)  # tests drive the loop with stand-in configs
        if limit is not None and self.fail_streak >= limit:
            raise Stalled(f"no update arrived in the last {self.fail_streak} jobs (virtual time "
                          f"{self.eng.now:g}, version {self.eng.version}): every client drops out, crashes "
                          "or sends rejected updates (see events.jsonl; engine.max_failed_streak sets the limit)")

    def deliver(self, f: Flight, update: Any) -> None:
        """Hand an accepted update to the strategy at the current time (both clocks).

        Args:
            f: the job's flight (its start model and timeline).
            update: the accepted update.
        """
        eng, p = self.eng, f.pending
        staleness = eng.version - p.job.task.version  # n − ρ_i(n) (Fraboni et al., JMLR 2023, server step)
        eng.event("arrive", client=p.client, job=p.job.id, virtual_time=p.arrive, version=eng.version,
                  staleness=staleness, metrics=dict(update.metrics or {}))
        eng.counters.num_updates += 1
        self.since_commit += 1
        self.release(p.client, arrived=True)
        info = ArrivalInfo(eng.version, eng.now, eng.n, staleness, base_params=f.base)
        if getattr(eng, "dp", None) is not None:  # central DP: clip + noise per arriving update
            update = eng.dp.arrival(update, p.client, p.job.id)
        eng.state, new = self.strategy.receive(eng.state, eng.params, update, info)
        if new is not None:
            self.commit(new)

    def on_tick(self, k: int) -> None:
        """Run the strategy's timer (e.g. FedFix's Δt) and schedule the next tick.

        Args:
            k: the tick number (virtual time k·Δt).
        """
        eng = self.eng
        self.push((k + 1) * self.interval, TICK, k + 1)  # ticks at k·Δt, never accumulated
        info = ArrivalInfo(eng.version, eng.now, eng.n, 0)
        eng.state, new = self.strategy.tick(eng.state, eng.params, info)
        if new is not None:
            self.commit(new)

    def on_slot(self, k: int) -> None:
        """Wake at participation slot `k` (idle clients may have come online).

        Args:
            k: the slot number.
        """
        if self.wake_slot == k:
            self.wake_slot = None
        self.idle_slots = self.idle_slots + 1 if not self.flights and not self.waiting else 0

    def on_eval(self, k: int) -> None:
        """Timed evaluation (`metrics.eval_every_time`), unless this model was just evaluated.

        Args:
            k: the evaluation number.
        """
        self.push((k + 1) * self.eval_every_time, EVAL, k + 1)
        if self.last_eval != (self.eng.version, self.eng.now):
            self.evaluate()

    def commit(self, new: np.ndarray) -> None:
        """Commit the strategy's new model as the next version; restart on_commit clients; evaluate.

        Args:
            new: the strategy's proposed model (passed through the server optimiser).
        """
        eng = self.eng
        if self.since_commit:  # an empty FedFix tick is a no-op step, not a server-optimiser step
            new = eng.server_step(new)
        eng.params = np.asarray(new, dtype=np.float32)
        eng.version += 1
        eng.event("commit", client=None, virtual_time=eng.now, version=eng.version, staleness=None,
                  num_updates=self.since_commit)
        self.since_commit = 0
        if self.waiting and not self.finished():  # on_commit: the clients that took part restart
            online = self.avail.at(eng.now)
            for c in sorted(self.waiting):
                self.busy[c] = False
            restart = [c for c in sorted(self.waiting) if online[c]]
            self.waiting = []
            for c in restart:
                self.start(c)
        record = None
        if self.eval_every is not None and eng.version % self.eval_every == 0:
            record = self.evaluate()
        if eng.on_progress:
            eng.on_progress(eng.version, record or {})

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the current model (a metrics.jsonl row keyed by version).

        Returns:
            The metrics record.
        """
        self.last_eval = (self.eng.version, self.eng.now)
        return self.eng.evaluate(None)
