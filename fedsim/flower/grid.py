"""`GridExecutor`: the executor the engine sees when it runs inside a Flower ServerApp.

submit -> `Grid.push_messages` (one TRAIN message per job, routed to the node that hosts
the job's client); next_result -> `Grid.pull_messages`, returning replies as they come
back, in any order (the engine commits in virtual-time order, or on the wall clock in
the order they come back; `poll(timeout)` lets that loop wake for its timers). The same
adapter serves sync rounds and async arrivals, in simulation (InMemoryGrid) and deployment.

Two message formats: fedsim's own (`codec`, for fedsim's ClientApp: a setup QUERY maps
nodes to partitions) and the standard Flower contents (`standard`, for a user's own
ClientApp: no query, nodes in node-id order). A node that fails its setup (the QUERY, or
for a standard node its first TRAIN reply) or answers in an unknown format is excluded:
one logged line, an `exclude` event, and its clients get no more jobs (`bind_engine`
masks them out of the participation process); the run goes on with the other nodes,
and stops with one line when none is left.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Mapping, Sequence

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsim.errors import RunError
from fedsim.flower import codec
from fedsim.types import Job, JobResult


def say(msg: str) -> None:
    """Default log function: print and flush (the ServerApp's output is streamed to the server)."""
    print(msg, flush=True)


class NoNodesLeft(RunError):
    """Every Flower node was excluded; the run cannot go on."""


class Excluding:
    """A participation process whose clients on excluded nodes are never online.

    The inner process is called exactly as before (same random draws); its other
    attributes (`probs`, ...) are passed through.

    Args:
        inner: the scenario's participation process.
        allowed: (N,) bool mask shared with the executor (False = the client's node is excluded).
    """

    def __init__(self, inner: Any, allowed: np.ndarray):
        self.inner, self.allowed = inner, allowed

    def online(self, step: int, t: float) -> np.ndarray:
        """The inner process's online mask with excluded clients removed.

        Raises:
            NoNodesLeft: when every client's node is excluded.
        """
        if not self.allowed.any():
            raise NoNodesLeft("every Flower node was excluded (see the `exclude` events); the run stops "
                              "with what it computed so far")
        return np.asarray(self.inner.online(step, t), dtype=bool) & self.allowed

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "allowed"):
            raise AttributeError(name)
        return getattr(self.inner, name)


class BackendGone(RuntimeError):
    """The Flower backend stopped while the engine was waiting for it."""


class GridExecutor:
    """The executor protocol over a Flower Grid: each job is a TRAIN message to one node.

    Client k runs on node k mod n of the n nodes ordered by the partition id they report
    (standard clients: by node id). A job whose node does not answer within `job_timeout`, or
    answers with an error, is recorded as failed; a node that fails setup or answers in an
    unknown format is excluded (module docstring).

    Args:
        grid: the ServerApp's Grid.
        setup_config: message config keys telling clients where the run's setup is
            (see `fedsim.flower.client_app`); sent with every job.
        num_nodes: wait until this many nodes are connected before mapping them.
        poll: seconds between `pull_messages` calls while nothing has arrived.
        job_timeout: wall seconds after which a job with no reply is recorded as failed.
        connect_timeout: wall seconds to wait for `num_nodes` nodes.
        abort: set by the host when the backend died; the waits then raise `BackendGone`.
        up_type: the strategy's declared up message type, to decode replies with.
        state_type: the strategy's declared client state type (dataclass states), likewise.
        client_api: None for fedsim's ClientApp; "message" or "numpy" for a user's own ClientApp
            speaking the standard Flower contents (`fedsim.flower.standard`).
        layout: the model's state_dict layout (standard clients).
        client_cfg: the scenario's `client:` block (standard clients: the config keys sent).
        sends: the strategy's `sends` (standard clients: delta = returned − sent, or the model).
        log: receives the one-line exclusion messages.
    """

    def __init__(self, grid: Grid, setup_config: Mapping[str, Any], num_nodes: int, *, poll: float = 0.005,
                 job_timeout: float = 3600.0, connect_timeout: float = 600.0,
                 abort: threading.Event | None = None, up_type: type | None = None,
                 state_type: type | None = None, client_api: str | None = None, layout: Any = None,
                 client_cfg: Any = None, sends: str = "delta", log: Any = say):
        self.grid = grid
        self.client_api, self.layout, self.client_cfg, self.sends, self.log = client_api, layout, client_cfg, sends, log
        self.excluded: dict[int, str] = {}  # node id -> reason
        self._answered: set[int] = set()  # standard nodes that have sent one good reply
        self._engine: Any = None
        self._allowed: np.ndarray | None = None  # (N,) False for clients whose node is excluded
        self._pending_events: list[dict[str, Any]] = []
        self.up_type, self.state_type = up_type, state_type
        self.setup_config = dict(setup_config)
        self.num_nodes = num_nodes
        self.poll_interval = poll
        self.job_timeout = job_timeout
        self.connect_timeout = connect_timeout
        self.abort = abort or threading.Event()
        self.nodes: list[int | None] = []  # node ids ordered by partition id (None: that slot's node failed)
        self._inflight: dict[str, tuple[Job, float]] = {}  # message id -> (job, wall time pushed)
        self._ready: collections.deque[JobResult] = collections.deque()

    # -- executor protocol ----------------------------------------------------------------

    def start(self, setup: Any = None) -> None:
        """Wait for the nodes and map them (QUERY round: node -> partition id)."""
        if not self.nodes:
            self.connect()

    def submit(self, jobs: Sequence[Job]) -> None:
        """Push one TRAIN message per job; a message the link refuses becomes a failed result."""
        if not jobs:
            return
        sendable = []
        for job in jobs:  # a job for an excluded node is failed at once, never sent
            node = self.node_for(job.task.client)
            if node is None or node in self.excluded:
                why = "its node failed setup" if node is None else f"node {node} excluded: {self.excluded[node]}"
                self._ready.append(JobResult(job.id, job.task.client, None, job.client_state, why))
            else:
                sendable.append((job, node))
        jobs = [job for job, _ in sendable]
        msgs = [Message(self._encode(job), dst_node_id=node, message_type=MessageType.TRAIN,
                        group_id=str(job.task.round)) for job, node in sendable]
        if not msgs:
            return
        now = time.monotonic()
        ids = list(self.grid.push_messages(msgs))
        for mid, job in zip(ids, jobs, strict=False):
            if mid:
                self._inflight[mid] = (job, now)
            else:  # the link refused the message (e.g. node gone)
                self._ready.append(JobResult(job.id, job.task.client, None, job.client_state,
                                             "Flower refused the message (node unavailable)"))

    def next_result(self) -> JobResult:
        """Block until a reply (or a timeout failure) is ready and return it.

        Raises:
            RuntimeError: no job is in flight.
            BackendGone: the Flower backend stopped.
        """
        result = self.poll(None)
        assert result is not None
        return result

    def poll(self, timeout: float | None) -> JobResult | None:
        """The next result as it comes back, or None if none does within `timeout` seconds.

        The wall-clock async loop uses it to wake for its timers.

        Args:
            timeout: wall seconds to wait; None waits for a result.

        Returns:
            A result, or None on timeout.

        Raises:
            RuntimeError: no job is in flight.
            BackendGone: the Flower backend stopped.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready:
            if not self._inflight:
                raise RuntimeError("next_result() with no job in flight")
            self._check_abort()
            got = self._pull()
            if not got:
                self._expire()
                if not self._ready:
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    time.sleep(self.poll_interval)
        return self._ready.popleft()

    def close(self) -> None:
        """Forget the jobs in flight (their late replies are never pulled)."""
        self._inflight.clear()

    # -- internals --------------------------------------------------------------------------

    def node_for(self, client: int) -> int | None:
        """The node that runs client `client`: number `client` mod n of the nodes ordered by partition id.

        None when that node failed its setup query.
        """
        return self.nodes[client % len(self.nodes)]

    def bind_engine(self, engine: Any) -> Excluding:
        """Called by the engine once it exists: exclusion events go to it, excluded clients get no jobs.

        Args:
            engine: the engine (its `event`, `now` and number of clients `n`).

        Returns:
            The engine's participation process, wrapped in `Excluding`.
        """
        self._engine = engine
        self._allowed = np.ones(int(engine.n), dtype=bool)
        for c in range(int(engine.n)):
            node = self.node_for(c) if self.nodes else None
            if node is None or node in self.excluded:
                self._allowed[c] = False
        for ev in self._pending_events:
            engine.event("exclude", virtual_time=engine.now, version=engine.version, **ev)
        self._pending_events.clear()
        return Excluding(engine.participation, self._allowed)

    def exclude(self, node: int, reason: str) -> None:
        """Exclude `node`: one logged line, an `exclude` event, and no more jobs for its clients.

        Args:
            node: the node id.
            reason: one line, e.g. "setup failed: ModuleNotFoundError: No module named 'fedsim'".
        """
        if node in self.excluded:
            return
        reason = " ".join(str(reason).split())
        self.excluded[node] = reason
        self.log(f"node {node} excluded: {reason}")
        clients = [c for c in range(len(self._allowed))] if self._allowed is not None else []
        clients = [c for c in clients if self.nodes and self.node_for(c) == node]
        if self._allowed is not None:
            self._allowed[clients] = False
        ev = {"client": None, "node": int(node), "reason": reason, "clients": clients}
        if self._engine is None:
            self._pending_events.append(ev)
        else:
            self._engine.event("exclude", virtual_time=self._engine.now, version=self._engine.version, **ev)
        if self.nodes and all(n is None or n in self.excluded for n in self.nodes):
            self.log("every Flower node is excluded: the run stops after the jobs in flight")

    def _encode(self, job: Job):
        if self.client_api is None:
            return codec.encode_job(job, self.setup_config)
        from fedsim.flower import standard

        return standard.encode_train(job, self.layout, standard.train_config(job, self.client_cfg), self.client_api)

    def _check_abort(self) -> None:
        if self.abort.is_set():
            raise BackendGone("the Flower backend stopped")

    def connect(self) -> None:
        """Wait for `num_nodes` nodes, then map them to clients.

        fedsim's ClientApp: query each node for its partition id (the query carries the setup
        config, so nodes build their runtimes now) and order the nodes by it; a node whose
        query fails, answers in an unknown format, repeats a partition id or does not answer
        within `connect_timeout` is excluded. Standard clients are not queried: their nodes
        are ordered by node id.

        Raises:
            TimeoutError: too few nodes within `connect_timeout`.
            NoNodesLeft: every node was excluded.
            BackendGone: the Flower backend stopped.
        """
        deadline = time.monotonic() + self.connect_timeout
        while True:
            self._check_abort()
            ids = sorted(self.grid.get_node_ids())
            if len(ids) >= self.num_nodes:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(ids)} of {self.num_nodes} Flower nodes connected "
                                   f"after {self.connect_timeout:g} s")
            time.sleep(0.05)
        if self.client_api is not None:
            self.nodes = list(ids)
            return
        msgs = [Message(RecordDict({"config": ConfigRecord(self.setup_config)}), dst_node_id=n,
                        message_type=MessageType.QUERY) for n in ids]
        pending: dict[str, int] = {}
        for mid, n in zip(list(self.grid.push_messages(msgs)), ids, strict=False):
            if mid:
                pending[mid] = n
            else:
                self.exclude(n, "setup failed: the link refused the setup query")
        by_partition: dict[int, int] = {}
        while pending:
            self._check_abort()
            replies = list(self.grid.pull_messages(list(pending)))
            for rep in replies:
                node = pending.pop(rep.metadata.reply_to_message_id, rep.metadata.src_node_id)
                why, pid = self._query_answer(rep)
                if why is None and pid in by_partition:
                    why = f"setup failed: reports partition-id {pid}, as node {by_partition[pid]} does"
                if why is not None:
                    self.exclude(node, why)
                else:
                    by_partition[pid] = node
            if not replies:
                if time.monotonic() > deadline:
                    for node in pending.values():
                        self.exclude(node, f"setup failed: no answer to the setup query within "
                                           f"{self.connect_timeout:g} s")
                    break
                time.sleep(self.poll_interval)
        if not by_partition:
            raise NoNodesLeft("every Flower node failed setup: "
                              + "; ".join(f"node {n}: {r}" for n, r in self.excluded.items()))
        if set(by_partition) <= set(range(self.num_nodes)):  # slot p = partition p; failed slots stay empty
            self.nodes = [by_partition.get(p) for p in range(self.num_nodes)]
        else:
            self.nodes = [by_partition[p] for p in sorted(by_partition)]

    @staticmethod
    def _query_answer(rep: Message) -> tuple[str | None, int]:
        """(reason to exclude or None, partition id) from a setup query reply."""
        if rep.has_error():
            return f"setup failed: {rep.error.reason}", -1
        try:
            cfg = rep.content.config_records["config"]
            error, pid = cfg.get("error"), int(cfg["partition-id"])
        except Exception as exc:  # noqa: BLE001 — a malformed answer excludes the node
            return f"answers in an unknown format: setup reply ({type(exc).__name__}: {exc})", -1
        if error:
            return f"setup failed: could not build the client runtime: {error}", -1
        return None, pid

    def _pull(self) -> int:
        replies = list(self.grid.pull_messages(list(self._inflight)))
        for rep in replies:
            job, _ = self._inflight.pop(rep.metadata.reply_to_message_id)
            self._ready.append(self._result(job, rep))
        return len(replies)

    def _result(self, job: Job, rep: Message) -> JobResult:
        node = rep.metadata.src_node_id
        if rep.has_error():
            reason = f"ClientApp error: {rep.error.reason}"
            if self.client_api is not None and node not in self._answered:  # a stock app's setup is its first job
                self.exclude(node, f"setup failed: {rep.error.reason}")
            return JobResult(job.id, job.task.client, None, job.client_state, reason)
        try:
            if self.client_api is None:
                res = codec.decode_result(rep.content, self.up_type, self.state_type)
                if res.id != job.id or res.client != job.task.client:
                    raise ValueError(f"reply is for job {res.id} (client {res.client}), expected job {job.id}")
            else:
                from fedsim.flower import standard

                update = standard.decode_train(rep.content, job, self.layout, self.sends, self.client_api)
                res = JobResult(job.id, job.task.client, update, job.client_state, None)
        except Exception as exc:  # noqa: BLE001 — a malformed reply is a failed job and excludes its node
            why = f"{type(exc).__name__}: {exc}"
            self.exclude(node, f"answers in an unknown format: {why}")
            return JobResult(job.id, job.task.client, None, job.client_state, f"malformed reply: {why}")
        self._answered.add(node)
        return res

    def _expire(self) -> None:
        now = time.monotonic()
        for mid, (job, pushed) in list(self._inflight.items()):
            if now - pushed > self.job_timeout:
                del self._inflight[mid]
                self._ready.append(JobResult(job.id, job.task.client, None, job.client_state,
                                             f"no reply within {self.job_timeout:g} s"))
