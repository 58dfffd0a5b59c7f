"""The run loop on the virtual clock.

The engine owns the global model, every piece of state and the order in which results are
committed: virtual time, ties by dispatch index — never the order in which an executor
returns them.

Sync mode: round r starts at virtual time T_r; the participation process says who is
online; each online client gets a job whose virtual duration is fixed at dispatch by
the system model; the round ends when its slowest participant arrives (or at the
deadline); the strategy aggregates the arrived updates in arrival order.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from fedsim import seeding
from fedsim.engine import checkpoint
from fedsim.engine.async_loop import AsyncLoop
from fedsim.engine.client_state import ClientStates
from fedsim.engine.robust import NoRobust
from fedsim.engine.state import Counters, Pending
from fedsim.engine.validation import validate_update
from fedsim.engine.wall_loop import WallLoop
from fedsim.errors import RunError
from fedsim.pipeline import compression, secagg
from fedsim.pipeline import dp as dp_stage
from fedsim.results.history import History
from fedsim.scenario.schema import FaultsConfig
from fedsim.strategy import server_opt
from fedsim.strategy.contracts import declared, hook, message_nbytes
from fedsim.types import ClientTask, ClientUpdate, Job, JobResult, Oracle, RoundInfo
from fedsim.world import channel
from fedsim.world.faults import Faults
from fedsim.world.system import SystemModel

if TYPE_CHECKING:  # keeps the engine importable without torch (async event-order tests)
    from fedsim.training.evaluation import Evaluator


SLOW = "not among the fastest"  # the drop reason of a job cut by `engine.keep_fastest`


class Engine:
    """The simulation: the global model, the strategy's state and the run loop.

    Args:
        scenario: the validated scenario.
        data: the federated data set.
        executor: runs the jobs (inline, Ray, Flower); results may come back in any order.
        history: writes metrics.jsonl, clients.jsonl and events.jsonl.
        evaluator: evaluates the global model (server test set and per-client metrics).
        params: the initial flat model.
        participation: the participation process (who is online when).
        system: the system model (job durations and dropouts).
        work: per-client work units (what the system model's durations scale with).
        oracle: simulator knowledge that strategies may declare they use (`uses_oracle`).
        on_progress: called with (round or version, the evaluation record or {}) after each step.
    """
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
        self.client_states = ClientStates(getattr(scenario.engine, "client_state", "float32"))
        self.participations = np.zeros(self.n, dtype=np.int64)
        self.started = np.zeros(self.n, dtype=np.int64)  # jobs dispatched to each client (async lr_decay)
        self.train_sums: dict[str, list[float]] = {}  # metric -> [Σ n_i v_i, Σ n_i] since the last evaluation
        self.num_examples = data.num_examples()
        self.on_progress = on_progress
        self.wall_start = time.perf_counter()
        # Reliability blocks (fedsim.world.faults, fedsim.engine.robust, fedsim.engine.checkpoint); a scenario-like
        # object without them (tests' stand-ins) gets the defaults.
        self.faults = Faults(getattr(scenario, "faults", None) or FaultsConfig(), self.root, self.n)
        self.max_norm = getattr(getattr(scenario, "validation", None), "max_norm", None)
        self.robust = getattr(scenario, "robust", None) or NoRobust()  # cohort wrapper before aggregate
        self.checkpoint_every = getattr(getattr(scenario, "checkpoint", None), "every", None)
        # A client job's exception stops a simulated run (unset = raise) and is a drop in a
        # deployed one (the deploy server sets `drop`; a wall-clock run is always deployed).
        policy = getattr(scenario.engine, "on_client_error", None)
        if policy is None:
            policy = "drop" if getattr(scenario.engine, "clock", "virtual") == "wall" else "raise"
        self.on_client_error = policy
        self.start_round = 0  # > 0 when resumed from a checkpoint (fedsim.engine.checkpoint.restore)
        self.resume_loop: dict | None = None  # async: the event loop's checkpointed state
        # declared capabilities (fedsim.strategy.contracts), read once
        self.sends = declared(self.strategy, "sends")
        # without a client rule a client keeps no state of its own, so a job whose upload is
        # lost need not be computed at all
        self.stateless_clients = hook(self.strategy, "client_update") is None
        self.down_type = declared(self.strategy, "down_type")
        self.up_type = declared(self.strategy, "up_type")
        # Client stage (fedsim.pipeline.compression): None = uploads go as trained, no arithmetic at all.
        comp = getattr(scenario, "compression", None)
        self.compression = None if compression.is_identity(comp) else compression.CompressionStage(
            comp, self.root, self.params.size, self.up_type, self.params)
        if self.compression is not None and self.compression.stateful:
            self.stateless_clients = False  # the error-feedback memory is client state: lost uploads still run
        if declared(self.strategy, "uses_oracle"):
            self.state = self.strategy.init(self.params, self.n, oracle=oracle)
        else:
            self.state = self.strategy.init(self.params, self.n)
        # Server pipeline, second stage (fedsim.strategy.server_opt): None = no server optimiser,
        # and then no arithmetic at all, so such runs stay bit-identical.
        opt = getattr(self.strategy, "server_opt", None)
        self.server_opt = None if server_opt.is_identity(opt) else opt
        self.opt_state = None if self.server_opt is None else self.server_opt.init(self.params)
        # Secure aggregation (fedsim.pipeline.secagg): None = off, and then no arithmetic at all.
        self.secagg = secagg.build(getattr(scenario, "secagg", None), self.root, self.strategy,
                                   getattr(scenario, "system", None))
        # Update pipeline, DP stage (fedsim.pipeline.dp): None for `dp: {name: none}`, then no DP arithmetic at all.
        self.dp = dp_stage.build(getattr(scenario, "dp", None), scenario, self.root, self.n)
        bind = getattr(executor, "bind_engine", None)  # deployed (fedsim.flower.grid): clients of excluded
        if bind is not None:  # nodes drop out of participation; `exclude` events go to events.jsonl
            self.participation = bind(self)

    # -- shared machinery -----------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> None:
        """Append one record to events.jsonl.

        Args:
            kind: dispatch, finish, arrive, drop, commit or warning.
            **fields: the record's other fields (client, job, virtual_time, version, staleness, ...).
        """
        self.history.event({"kind": kind, **fields})

    def dispatch(self, client: int, start: float, round_index: int) -> Pending:
        """Create client `client`'s next job at virtual time `start` from the current model.

        Everything random about the job (its seed, duration, dropout, faults, uplink loss,
        downlink noise) is drawn here from streams keyed by the root seed, the client and
        the dispatch index, so it never depends on the order in which results come back.

        Args:
            client: the client.
            start: the virtual dispatch time.
            round_index: the sync round (async: the server version).

        Returns:
            The job with its fixed virtual timeline.
        """
        d = self.counters.dispatches
        self.counters.dispatches += 1
        down = None
        if self.down_type is not None:  # declared: the strategy sends a typed down message
            down = self.strategy.configure(self.state, client, RoundInfo(round_index, self.n, (), start))
        sent = self.params if self.compression is None or not self.compression.downlink \
            else self.compression.download(self.params, client, d)  # compressed broadcast (downlink: true)
        received = channel.downlink(self.sc.channel, sent, self.root, client, d)
        lr_step = round_index if self.sc.engine.mode == "sync" else int(self.started[client])
        self.started[client] += 1
        task = ClientTask(client, received, self.version, round_index, d,
                          seeding.seed_of(self.root, "job", client, d), down, lr_step)
        sizes = {} if self.compression is None else {"up_bytes": self.compression.upload_bytes,
                                                     "down_bytes": self.compression.download_bytes}
        fin, arr, dropped = self.system.duration(client, int(self.work[client]),
                                                 seeding.rng(self.root, "system_job", client, d), **sizes)
        job = Job(d, task, self.client_states.get(client), start + arr)
        down_bytes = None if self.compression is None else self.compression.download_bytes
        self.counters.bytes_down += self.params.nbytes if down_bytes is None else down_bytes
        self.event("dispatch", client=client, job=d, virtual_time=start, version=self.version, staleness=None)
        p = Pending(job, client, start, start + fin, start + arr, "dropout" if dropped else None,
                    channel.lost(self.sc.channel, self.root, client, d))
        if self.faults.active and p.dropped is None:
            hit = self.faults.on_dispatch(client, d, start, p.finish, p.arrive)
            if hit is not None:  # crashed or straggling: the server learns of it at hit[1]
                p.dropped, p.arrive = hit
        return p

    def computes(self, p: Pending) -> bool:
        """Whether job `p` must run on the executor.

        A dropped job never runs. A job whose upload is lost still runs when the strategy has
        a client rule: the real client trained and keeps its own state (SCAFFOLD's c_i,
        FedSpeed's h_i); only the upload is lost.

        Args:
            p: the dispatched job.

        Returns:
            True if the job is submitted to the executor.
        """
        return p.dropped is None and not (p.lost and self.stateless_clients)

    def accept(self, p: Pending, result: JobResult | None) -> ClientUpdate | None:
        """Apply the uplink to a finished job's result.

        Args:
            p: the job.
            result: its result, or None for a lost job that was not computed (`computes`).

        Returns:
            The update as the server receives it, or None (a `drop` is recorded) when the
            update is lost, failed or invalid.

        Raises:
            RunError: for a client error when `engine.on_client_error` is `raise`.
        """
        if result is None:
            return self.reject(p, "lost in channel", p.arrive)
        if result.error is not None:
            if self.on_client_error == "raise":
                raise RunError(f"client {p.client} failed job {p.job.id} (round {p.job.task.round}, "
                               f"version {p.job.task.version}): {result.error} "
                               "(set engine.on_client_error: drop to record it as a drop and go on)")
            return self.reject(p, f"client error: {result.error}", p.arrive)
        # Client stages (fedsim.pipeline), in the order an honest client applies them before sending:
        # DP clip (+ local noise), then compression with error feedback. Both run even if the upload
        # is then lost: the client released the message and its memory moved.
        if self.dp is not None and isinstance(result.update, ClientUpdate):
            result = replace(result, update=self.dp.client(result.update, p.client, p.job.id))
        if self.compression is not None:
            result = replace(result, update=self.compression.apply(result.update, p.client, p.job.id))
        if p.lost:  # the client trained and keeps its state; the server never sees the update
            self.client_states[p.client] = result.client_state
            return self.reject(p, "lost in channel", p.arrive)
        update, fault = result.update, None
        base = p.job.task.params  # the model the client started from (as received)
        if self.faults.active and isinstance(update, ClientUpdate):
            update, fault = self.faults.corrupt(update, p.job.id, base)
        why = validate_update(update, self.params.size, p.client, self.max_norm,
                              sends=self.sends, up_type=self.up_type, base=base)
        if why is not None:
            return self.reject(p, why, p.arrive, **({"fault": fault} if fault else {}))
        assert update is not None
        self.client_states[p.client] = result.client_state
        if self.sc.channel.uplink_noise_std > 0:  # the channel perturbs the vector as sent (delta or model)
            update = replace(update, vector=channel.uplink(self.sc.channel, update.vector, self.root,
                                                           p.client, p.job.id))
        self.counters.bytes_up += (update.vector.nbytes + message_nbytes(update.up) if self.compression is None
                                   else self.compression.upload_bytes)  # the compressed wire size
        if self.compression is not None:  # EF21: the server's own copy of g_i decodes the update
            update = self.compression.receive(update, p.client)
        self.participations[p.client] += 1
        self.note_train_metrics(update)
        return update

    def note_train_metrics(self, update: ClientUpdate) -> None:
        """Add an accepted update's finite scalar metrics to the running example-weighted sums.

        Args:
            update: the accepted update; its `metrics` are weighted by `num_examples`.
        """
        n = float(update.num_examples)
        for key, value in (update.metrics or {}).items():
            if isinstance(value, (int, float, np.floating, np.integer)) and np.isfinite(value):
                name = key if key.startswith("train_") else f"train_{key}"
                acc = self.train_sums.setdefault(name, [0.0, 0.0])
                acc[0] += n * float(value)
                acc[1] += n

    def train_metrics(self) -> dict[str, float]:
        """The example-weighted means of the client metrics since the last evaluation, then reset.

        Returns:
            `train_loss` and the other `train_*` means (Σ n_i v_i / Σ n_i over the updates
            accepted since the previous evaluation); empty when none arrived.
        """
        out = {k: s / w for k, (s, w) in sorted(self.train_sums.items()) if w > 0}
        self.train_sums = {}
        return out

    def reject(self, p: Pending, reason: str, at: float, **extra: Any) -> None:
        """Record job `p` as failed: count it and log a `drop` event.

        Args:
            p: the job.
            reason: why (dropout, deadline, lost in channel, client error: ..., invalid update).
            at: the virtual time the server learns of it.
            **extra: further event fields (e.g. `fault`).

        Returns:
            None, so that callers can `return self.reject(...)` for "no update".
        """
        self.counters.num_failed += 1
        self.event("drop", client=p.client, job=p.job.id, virtual_time=at, version=self.version,
                   staleness=None, reason=reason, **extra)
        return None

    def warn_all_failed(self, where: str, jobs: int) -> None:
        """Warn loudly (stderr warning and a `warning` event) that no job of `where` brought an update.

        Args:
            where: the step that failed, e.g. "round 3".
            jobs: how many jobs it dispatched.
        """
        msg = (f"{where}: every one of its {jobs} jobs failed (see the `drop` events in "
               "events.jsonl); the model did not change")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        self.event("warning", client=None, virtual_time=self.now, version=self.version, staleness=None,
                   message=msg)

    def dp_metrics(self, record: dict[str, Any]) -> None:
        """Add ε (and the adaptive clip) to an evaluation row; give the DP start notice once.

        Args:
            record: the metrics.jsonl row being built.
        """
        note = self.dp.take_note()
        if note:  # no amplification by sampling: say so once, at the first evaluation of a fresh run
            warnings.warn(note, RuntimeWarning, stacklevel=3)
            self.event("warning", client=None, virtual_time=self.now, version=self.version, staleness=None,
                       message=note)
        record.update(self.dp.metrics())

    def server_step(self, new: np.ndarray) -> np.ndarray:
        """Commit the strategy's proposal `new` through the server optimiser (Δ = new − params).

        Args:
            new: the strategy's proposed model.

        Returns:
            The model to commit (`new` itself without a server optimiser).
        """
        if self.server_opt is None:
            return new
        self.opt_state, out = server_opt.server_step(self.server_opt, self.opt_state, self.params, new)
        return out

    def secure_aggregate(self, r: int, pendings: list[Pending], updates: list[ClientUpdate]) -> list[ClientUpdate]:
        """Run round r's secure aggregation: the strategy gets only the pooled sum (fedsim.pipeline.secagg).

        Adds the protocol's extra rounds to the clock and its bytes to the counters; a round that
        aborts (too few share holders survive) is a `warning` event and an empty cohort.

        Args:
            r: the round.
            pendings: every job dispatched in the round (U1: they all took part in the key setup).
            updates: the accepted updates (U3's inputs).

        Returns:
            [the pooled update], or [] when the round failed or nobody survived.
        """
        assert self.secagg is not None
        out = self.secagg.round(r, [p.client for p in pendings], updates, self.params.size, self.version)
        self.now += out.seconds
        self.counters.bytes_up += out.bytes_up
        self.counters.bytes_down += out.bytes_down
        if out.failure is not None and updates:
            self.counters.secagg_failed += 1
            msg = f"round {r + 1}: secure aggregation aborted: {out.failure}; the model did not change"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            self.event("warning", client=None, virtual_time=self.now, version=self.version, staleness=None,
                       message=msg)
        return out.cohort

    def collect(self, pendings: list[Pending]) -> dict[int, JobResult]:
        """Wait for every submitted job of `pendings`.

        Args:
            pendings: the jobs that were submitted.

        Returns:
            Their results keyed by job id.
        """
        wanted = {p.job.id for p in pendings}
        results: dict[int, JobResult] = {}
        while len(results) < len(wanted):
            r = self.executor.next_result()
            results[r.id] = r
        return results

    def evaluate(self, round_index: int | None, final: bool = False) -> dict[str, Any]:
        """Evaluate the global model and write a metrics.jsonl row (and clients.jsonl rows).

        The row has the evaluation metrics, the counters and the example-weighted means of the
        client training metrics since the previous evaluation (`train_loss`, ...).

        Args:
            round_index: the sync round (None in async mode: the row is keyed by version).
            final: whether this is the final evaluation.

        Returns:
            The metrics.jsonl record.
        """
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
        for key, value in self.train_metrics().items():
            record.setdefault(key, value)  # never shadows an evaluation metric
        if self.dp is not None:
            self.dp_metrics(record)
        self.history.metric(record)
        cm = self.sc.metrics.client_metrics
        rows = "all" if cm is True else "none" if cm is False else cm
        if rows != "none":
            report_fn = hook(self.strategy, "client_report")
            report = report_fn(self.state) if report_fn else {}
            step_key = ("round", round_index) if round_index is not None else ("version", self.version)
            ids = self.evaluator.clients  # every client, or the fixed `metrics.client_sample`
            pick = np.flatnonzero(self.participations[ids] > 0) if rows == "participants" else np.arange(len(ids))
            acc, loss = per_client["accuracy"][pick].tolist(), per_client["loss"][pick].tolist()
            ks = ids[pick].tolist()
            nex, parts = self.num_examples[ids[pick]].tolist(), self.participations[ids[pick]].tolist()
            for i, k in enumerate(ks):
                row = {"client": k, step_key[0]: step_key[1], "accuracy": acc[i], "loss": loss[i],
                       "num_examples": nex[i], "participations": parts[i]}
                row.update(report.get(k, {}))
                self.history.client(row)
            self.history.flush()
        return record

    # -- sync rounds ------------------------------------------------------------------------

    def drop_lost_and_slow(self, pendings: list[Pending]) -> None:
        """Sync: mark the jobs FedScale's aggregator would not collect (`engine.drop_offline`, `keep_fastest`).

        First a client that is offline when its upload would arrive is lost for the round
        (`offline`); then, of the jobs left, only the `keep_fastest` earliest arrivals (ties by
        dispatch index) are kept and the others are `not among the fastest` (FedScale,
        aggregator.py `tictak_client_tasks`). Nothing here is random: it reads the fixed
        timelines and the participation process's `available_to(client, t)`.

        Args:
            pendings: the round's jobs, with their timelines fixed at dispatch.

        Raises:
            RunError: when `drop_offline` is set and the participation process cannot say who is
                online at a given time.
        """
        eng = self.sc.engine
        if eng.drop_offline:
            online_at = getattr(self.participation, "available_to", None)  # one client, not a whole mask
            if online_at is None:
                raise RunError("engine.drop_offline: this participation process cannot say who is online at a "
                               "given virtual time (use fedscale_trace)")
            for p in pendings:
                if p.dropped is None and not online_at(p.client, p.arrive):
                    p.dropped = "offline"
        if eng.keep_fastest is not None:
            live = sorted((p for p in pendings if p.dropped is None), key=lambda q: (q.arrive, q.job.id))
            for p in live[eng.keep_fastest:]:
                p.dropped = SLOW

    def round_end(self, pendings: list[Pending], start: float) -> float:
        """The virtual time at which a sync round that started at `start` ends.

        The server waits for the slowest job it still expects (a dropout is noticed when its
        upload is due), at most until the deadline; with `keep_fastest` it stops at the K-th
        arrival once K arrived. Jobs lost offline or cut as too slow do not extend the round.

        Args:
            pendings: the round's jobs, drops marked.
            start: the round's start.

        Returns:
            The round's end (start + `empty_round_time` for a round nobody took part in).
        """
        eng = self.sc.engine
        if not pendings:
            return start + eng.empty_round_time
        waited = [p for p in pendings if p.dropped not in ("offline", SLOW)]
        kept = [p for p in waited if p.dropped is None]
        keep = getattr(eng, "keep_fastest", None)
        if keep is not None and len(kept) == keep:
            end = max(p.arrive for p in kept)
        elif waited:
            end = max(p.arrive for p in waited)
        else:  # everyone was lost: the server learns of it when the last upload was due
            end = max(p.arrive for p in pendings)
        return end if eng.deadline is None else min(end, start + eng.deadline)

    def run_sync(self) -> np.ndarray:
        """Run the synchronous rounds.

        Returns:
            The final model.

        Raises:
            RunError: for a client error when `engine.on_client_error` is `raise`.
        """
        eng = self.sc.engine
        every = self.sc.metrics.eval_every or 1
        if self.start_round == 0:
            self.evaluate(0)
        for r in range(self.start_round, eng.rounds):
            online = np.flatnonzero(self.participation.online(r, self.now))
            start = self.now
            pendings = [self.dispatch(int(c), start, r) for c in online]
            if eng.deadline is not None:
                for p in pendings:
                    if p.dropped is None and p.arrive - start > eng.deadline:
                        p.dropped = "deadline"
            if getattr(eng, "drop_offline", False) or getattr(eng, "keep_fastest", None) is not None:
                self.drop_lost_and_slow(pendings)
            end = self.round_end(pendings, start)
            live = [p for p in pendings if p.dropped is None]
            run = [p for p in live if self.computes(p)]
            self.executor.submit([p.job for p in run])  # late or dropped jobs are never computed
            results = self.collect(run)
            updates: list[ClientUpdate] = []
            # Commit order = virtual arrival time, ties by dispatch index (never executor order).
            for p in sorted(pendings, key=lambda q: (q.arrive, q.job.id)):
                if p.dropped is not None:
                    at = start + eng.deadline if p.dropped == "deadline" else end if p.dropped == SLOW else p.arrive
                    self.reject(p, p.dropped, at)
                    continue
                self.event("finish", client=p.client, job=p.job.id, virtual_time=p.finish,
                           version=self.version, staleness=0)
                update = self.accept(p, results.get(p.job.id))
                if update is not None:
                    self.event("arrive", client=p.client, job=p.job.id, virtual_time=p.arrive,
                               version=self.version, staleness=0, metrics=dict(update.metrics or {}))
                    updates.append(update)
            self.now = end
            if pendings and not updates:
                self.warn_all_failed(f"round {r + 1}", len(pendings))
            summed = None
            if self.secagg is not None and pendings:  # the server sees only the cohort's sum
                summed = self.secure_aggregate(r, pendings, updates)
                updates = updates if summed else []
            info = RoundInfo(r, self.n, tuple(int(c) for c in online), self.now)
            if self.dp is not None and summed is None:  # central DP: the cohort becomes its noisy clipped mean
                updates = self.dp.cohort(updates, r)
            cohort = self.robust.apply(updates) if summed is None else summed  # identity unless `robust:` is set
            self.state, new_params = self.strategy.aggregate(self.state, self.params, cohort, info)
            if cohort:  # an empty round leaves the model and the optimiser's moments alone
                new_params = self.server_step(new_params)
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
            ck = self.checkpoint_every
            if ck and (r + 1) % ck == 0 and r + 1 < eng.rounds:
                checkpoint.save(self, r + 1)
        return self.params

    def run(self) -> np.ndarray:
        """Run the scenario in its mode (sync rounds, async on the virtual or the wall clock).

        Returns:
            The final model.

        Raises:
            ValueError: for an engine mode this build does not have.
        """
        if self.sc.engine.mode == "sync":
            return self.run_sync()
        if self.sc.engine.mode == "async":
            if getattr(self.sc.engine, "clock", "virtual") == "wall":
                return WallLoop(self).run()
            return AsyncLoop(self).run()
        raise ValueError(f"engine.mode {self.sc.engine.mode!r} is not available in this build")
