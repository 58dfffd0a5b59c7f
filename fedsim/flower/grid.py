"""`GridExecutor`: the executor the engine sees when it runs inside a Flower ServerApp.

submit -> `Grid.push_messages` (one TRAIN message per job, routed to the node that hosts
the job's client); next_result -> `Grid.pull_messages`, returning replies as they come
back, in any order (the engine commits in virtual-time order, or on the wall clock in
the order they come back; `poll(timeout)` lets that loop wake for its timers). The same
adapter serves sync rounds and async arrivals, in simulation (InMemoryGrid) and deployment.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Mapping, Sequence

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsim.flower import codec
from fedsim.types import Job, JobResult


class BackendGone(RuntimeError):
    """The Flower backend stopped while the engine was waiting for it."""


class GridExecutor:
    """The executor protocol over a Flower Grid: each job is a TRAIN message to one node.

    Client k runs on node k mod n of the n nodes ordered by the partition id they report. A job
    whose node does not answer within `job_timeout`, or answers with an error, is recorded as failed.

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
    """

    def __init__(self, grid: Grid, setup_config: Mapping[str, Any], num_nodes: int, *, poll: float = 0.005,
                 job_timeout: float = 3600.0, connect_timeout: float = 600.0,
                 abort: threading.Event | None = None, up_type: type | None = None,
                 state_type: type | None = None):
        self.grid = grid
        self.up_type, self.state_type = up_type, state_type
        self.setup_config = dict(setup_config)
        self.num_nodes = num_nodes
        self.poll_interval = poll
        self.job_timeout = job_timeout
        self.connect_timeout = connect_timeout
        self.abort = abort or threading.Event()
        self.nodes: list[int] = []  # node ids ordered by partition id
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
        msgs = [Message(codec.encode_job(job, self.setup_config), dst_node_id=self.node_for(job.task.client),
                        message_type=MessageType.TRAIN, group_id=str(job.task.round)) for job in jobs]
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

    def node_for(self, client: int) -> int:
        """The node that runs client `client`: number `client` mod n of the nodes ordered by partition id."""
        return self.nodes[client % len(self.nodes)]

    def _check_abort(self) -> None:
        if self.abort.is_set():
            raise BackendGone("the Flower backend stopped")

    def connect(self) -> None:
        """Wait for `num_nodes` nodes, query each for its partition id and order the nodes by it.

        The query carries the setup config, so nodes can build their runtimes now (warm-up).

        Raises:
            TimeoutError: too few nodes within `connect_timeout`, or no answer to the query.
            RuntimeError: a node failed the query, could not build its runtime, or two nodes
                report the same partition id.
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
        msgs = [Message(RecordDict({"config": ConfigRecord(self.setup_config)}), dst_node_id=n,
                        message_type=MessageType.QUERY) for n in ids]
        pending = set(self.grid.push_messages(msgs))
        by_partition: dict[int, int] = {}
        while pending:
            self._check_abort()
            replies = list(self.grid.pull_messages(list(pending)))
            for rep in replies:
                pending.discard(rep.metadata.reply_to_message_id)
                if rep.has_error():
                    raise RuntimeError(f"Flower node {rep.metadata.src_node_id} failed the setup query: "
                                       f"{rep.error.reason}")
                cfg = rep.content.config_records["config"]
                if cfg.get("error"):
                    raise RuntimeError(f"Flower node {rep.metadata.src_node_id} could not build the "
                                       f"client runtime: {cfg['error']}")
                pid = int(cfg["partition-id"])
                if pid in by_partition:
                    raise RuntimeError(f"two Flower nodes report partition-id {pid}")
                by_partition[pid] = rep.metadata.src_node_id
            if not replies:
                if time.monotonic() > deadline:
                    raise TimeoutError("Flower nodes did not answer the setup query")
                time.sleep(self.poll_interval)
        self.nodes = [by_partition[p] for p in sorted(by_partition)]

    def _pull(self) -> int:
        replies = list(self.grid.pull_messages(list(self._inflight)))
        for rep in replies:
            job, _ = self._inflight.pop(rep.metadata.reply_to_message_id)
            self._ready.append(self._result(job, rep))
        return len(replies)

    def _result(self, job: Job, rep: Message) -> JobResult:
        if rep.has_error():
            return JobResult(job.id, job.task.client, None, job.client_state,
                             f"ClientApp error: {rep.error.reason}")
        try:
            res = codec.decode_result(rep.content, self.up_type, self.state_type)
        except Exception as exc:  # noqa: BLE001 — a malformed reply is a failed job, not a crash
            return JobResult(job.id, job.task.client, None, job.client_state,
                             f"malformed reply: {type(exc).__name__}: {exc}")
        if res.id != job.id or res.client != job.task.client:
            return JobResult(job.id, job.task.client, None, job.client_state,
                             f"reply is for job {res.id} (client {res.client}), expected job {job.id}")
        return res

    def _expire(self) -> None:
        now = time.monotonic()
        for mid, (job, pushed) in list(self._inflight.items()):
            if now - pushed > self.job_timeout:
                del self._inflight[mid]
                self._ready.append(JobResult(job.id, job.task.client, None, job.client_state,
                                             f"no reply within {self.job_timeout:g} s"))
