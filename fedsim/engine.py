"""The run loop on the virtual clock. Owns the global model, every piece of state and
the order in which results are committed: virtual time, ties by dispatch index —
never the order in which an executor returns them.

Sync mode: round r starts at virtual time T_r; the participation process says who is
online; each online client gets a job whose virtual duration is fixed at dispatch by
the system model; the round ends when its slowest participant arrives (or at the
deadline); the strategy aggregates the arrived updates in arrival order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from fedsim import channel, seeding
from fedsim.history import History
from fedsim.system import SystemModel
from fedsim.types import ClientTask, ClientUpdate, Job, JobResult, Oracle, RoundInfo

if TYPE_CHECKING:  # keeps the engine importable without torch (async event-order tests)
    from fedsim.metrics import Evaluator


@dataclass
class Pending:
    """A dispatched job and its fixed virtual timeline."""

    job: Job
    client: int
    start: float
    finish: float  # compute done
    arrive: float  # upload received by the server
    dropped: str | None = None  # reason, when the job will never arrive


@dataclass
class Counters:
    num_updates: int = 0
    num_failed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dispatches: int = 0


def validate_update(update: ClientUpdate | None, size: int, client: int, max_norm: float | None = None) -> str | None:
    """Why an update must be rejected, or None. Guards the global model against broken or
    malicious clients (shape, non-finite values, absurd norm)."""
    if update is None:
        return "no update"
    if update.client != client:
        return f"update claims client {update.client}, job was for client {client}"
    d = update.delta
    if not isinstance(d, np.ndarray) or d.shape != (size,):
        return f"wrong shape {getattr(d, 'shape', type(d).__name__)}, expected ({size},)"
    if not np.all(np.isfinite(d)):
        return "non-finite values in update"
    if max_norm is not None and float(np.linalg.norm(d)) > max_norm:
        return f"update norm {float(np.linalg.norm(d)):.3g} exceeds bound {max_norm:g}"
    if update.num_examples < 0:
        return "negative num_examples"
    return None


class Engine:
    def __init__(self, scenario, data, executor, history: History, evaluator: Evaluator,
                 params: np.ndarray, participation, system: SystemModel, work: np.ndarray,
                 oracle: Oracle, on_progress: Callable[[int, dict], None] | None = None):
        self.sc = scenario
        self.data = data
        self.executor = executor
        self.history = history
        self.evaluator = evaluator
        self.params = params.astype(np.float32)
        self.participation = participation
        self.system = system
        self.work = work
        self.root = scenario.seed
        self.n = data.num_clients
        self.strategy = scenario.strategy
        self.version = 0
        self.now = 0.0
        self.counters = Counters()
        self.client_states: dict[int, Any] = {}
        self.participations = np.zeros(self.n, dtype=np.int64)
        self.num_examples = data.num_examples()
        self.on_progress = on_progress
        self.wall_start = time.perf_counter()
        if getattr(self.strategy, "uses_oracle", False):
            self.state = self.strategy.init(self.params, self.n, oracle=oracle)
        else:
            self.state = self.strategy.init(self.params, self.n)

    # -- shared machinery -----------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> None:
        self.history.event({"kind": kind, **fields})

    def dispatch(self, client: int, start: float, round_index: int) -> Pending:
        """Create client `client`'s next job at virtual time `start` from the current model."""
        d = self.counters.dispatches
        self.counters.dispatches += 1
        configure = getattr(self.strategy, "configure", None)
        cfg = configure(self.state, client, RoundInfo(round_index, self.n, (), start)) if configure else {}
        received = channel.downlink(self.sc.channel, self.params, self.root, client, d)
        task = ClientTask(client, received, self.version, round_index, d,
                          seeding.seed_of(self.root, "job", client, d), cfg)
        fin, arr, dropped = self.system.duration(client, int(self.work[client]),
                                                 seeding.rng(self.root, "system_job", client, d))
        job = Job(d, task, self.client_states.get(client), start + arr)
        self.counters.bytes_down += self.params.nbytes
        self.event("dispatch", client=client, job=d, virtual_time=start, version=self.version, staleness=None)
        return Pending(job, client, start, start + fin, start + arr, "dropout" if dropped else None)

    def accept(self, p: Pending, result: JobResult) -> ClientUpdate | None:
        """Apply the uplink to a finished job's result; record a drop and return None if the
        update is lost, failed or invalid."""
        if result.error is not None:
            return self.reject(p, f"client error: {result.error}", p.arrive)
        if channel.lost(self.sc.channel, self.root, p.client, p.job.id):
            return self.reject(p, "lost in channel", p.arrive)
        why = validate_update(result.update, self.params.size, p.client)
        if why is not None:
            return self.reject(p, why, p.arrive)
        update = result.update
        assert update is not None
        self.client_states[p.client] = result.client_state
        if self.sc.channel.uplink_noise_std > 0:
            update = ClientUpdate(update.client, channel.uplink(self.sc.channel, update.delta, self.root,
                                                                p.client, p.job.id),
                                  update.num_examples, update.base_version, update.metrics, update.payload)
        self.counters.bytes_up += update.delta.nbytes + sum(v.nbytes for v in update.payload.values())
        self.participations[p.client] += 1
        return update

    def reject(self, p: Pending, reason: str, at: float) -> None:
        self.counters.num_failed += 1
        self.event("drop", client=p.client, job=p.job.id, virtual_time=at, version=self.version,
                   staleness=None, reason=reason)
        return None

    def collect(self, pendings: list[Pending]) -> dict[int, JobResult]:
        """Wait for every submitted job of `pendings`; results keyed by job id."""
        wanted = {p.job.id for p in pendings}
        results: dict[int, JobResult] = {}
        while len(results) < len(wanted):
            r = self.executor.next_result()
            results[r.id] = r
        return results

    def evaluate(self, round_index: int | None, final: bool = False) -> dict[str, Any]:
        metrics, per_client = self.evaluator.evaluate(self.params, per_client=True)
        c = self.counters
        record: dict[str, Any] = {}
        if round_index is not None:
            record["round"] = round_index
        record.update({
            "version": self.version, "virtual_time": self.now,
            "wall_time": time.perf_counter() - self.wall_start, **metrics,
            "num_updates": c.num_updates, "num_failed": c.num_failed,
            "bytes_up": c.bytes_up, "bytes_down": c.bytes_down,
        })
        self.history.metric(record)
        if self.sc.metrics.client_metrics:
            report_fn = getattr(self.strategy, "client_report", None)
            report = report_fn(self.state) if report_fn else {}
            step_key = ("round", round_index) if round_index is not None else ("version", self.version)
            for k in range(self.n):
                row = {"client": k, step_key[0]: step_key[1], "accuracy": per_client["accuracy"][k],
                       "loss": per_client["loss"][k], "num_examples": int(self.num_examples[k]),
                       "participations": int(self.participations[k])}
                row.update(report.get(k, {}))
                self.history.client(row)
            self.history.flush()
        return record

    # -- sync rounds ------------------------------------------------------------------------

    def run_sync(self) -> np.ndarray:
        eng = self.sc.engine
        every = self.sc.metrics.eval_every or 1
        self.evaluate(0)
        for r in range(eng.rounds):
            online = np.flatnonzero(self.participation.online(r, self.now))
            start = self.now
            pendings = [self.dispatch(int(c), start, r) for c in online]
            if eng.deadline is not None:
                for p in pendings:
                    if p.dropped is None and p.arrive - start > eng.deadline:
                        p.dropped = "deadline"
            live = [p for p in pendings if p.dropped is None]
            self.executor.submit([p.job for p in live])  # late or dropped jobs are never computed
            results = self.collect(live)
            updates: list[ClientUpdate] = []
            # Commit order = virtual arrival time, ties by dispatch index (never executor order).
            for p in sorted(pendings, key=lambda q: (q.arrive, q.job.id)):
                if p.dropped is not None:
                    at = start + eng.deadline if p.dropped == "deadline" else p.arrive
                    self.reject(p, p.dropped, at)
                    continue
                self.event("finish", client=p.client, job=p.job.id, virtual_time=p.finish,
                           version=self.version, staleness=0)
                update = self.accept(p, results[p.job.id])
                if update is not None:
                    self.event("arrive", client=p.client, job=p.job.id, virtual_time=p.arrive,
                               version=self.version, staleness=0)
                    updates.append(update)
            if pendings:
                ends = [p.arrive for p in pendings]
                end = max(ends) if eng.deadline is None else min(max(ends), start + eng.deadline)
            else:
                end = start + eng.empty_round_time
            self.now = end
            info = RoundInfo(r, self.n, tuple(int(c) for c in online), self.now)
            self.state, new_params = self.strategy.aggregate(self.state, self.params, updates, info)
            self.params = np.asarray(new_params, dtype=np.float32)
            self.version += 1
            self.counters.num_updates += len(updates)
            self.event("commit", client=None, virtual_time=self.now, version=self.version, staleness=None,
                       round=r + 1, num_updates=len(updates))
            record = None
            if (r + 1) % every == 0 or r + 1 == eng.rounds:
                record = self.evaluate(r + 1)
            if self.on_progress:
                self.on_progress(r + 1, record or {})
        return self.params

    def run(self) -> np.ndarray:
        if self.sc.engine.mode == "sync":
            return self.run_sync()
        if self.sc.engine.mode == "async":
            from fedsim.engine_async import run_async

            return run_async(self)
        raise ValueError(f"engine.mode {self.sc.engine.mode!r} is not available in this build")
