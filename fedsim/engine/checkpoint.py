"""Checkpoint and resume: the engine's whole mutable state in one file, written atomically.

`checkpoint: {every: N}` saves after every N-th round (sync) or every N-th committed
version (async) to `<out>/checkpoint/state.pkl`: virtual clock, model version and
parameters, strategy state, the server optimiser's state, every client's stored state,
participation counts, the participation process (with its random generator), counters,
the compression stage's error-feedback memory (fedsim.pipeline.compression),
the last metrics and the byte offsets of metrics/clients/events.jsonl; in async mode also
the event loop's state (`loop`: event heap, in-flight jobs, busy/waiting clients, cached
participation masks, timers — fedsim.engine.async_loop). All other randomness is keyed by
(client, dispatch index), which the counters carry, so nothing else needs saving. The file
is written to a temporary name, fsynced and moved into place with os.replace: a crash
leaves either the old or the new checkpoint.

`fedsim run --resume RUN_DIR` rebuilds the run from RUN_DIR/scenario.resolved.yaml,
truncates the JSONL files to the checkpointed offsets (dropping rows written after it),
restores the state and continues; the finished run's files equal an uninterrupted run's
(apart from `wall_time`).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 2  # 2: typed down/up messages in jobs (ClientTask.down, ClientUpdate.up)
FILE = Path("checkpoint") / "state.pkl"




def snapshot(engine, next_round: int, loop: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to continue `engine` at round `next_round`.

    Args:
        engine: the running engine (its history is flushed first).
        next_round: the sync round to continue from (async: the model version).
        loop: async only, the event loop's own state (`AsyncLoop.state`).

    Returns:
        A picklable dict of the engine's state.
    """
    engine.history.flush()
    return {
        "format": FORMAT, "mode": engine.sc.engine.mode, "next_round": next_round,
        "now": engine.now, "version": engine.version, "params": engine.params.copy(),
        "state": engine.state, "client_states": engine.client_states,
        "participations": engine.participations, "counters": asdict(engine.counters),
        "participation": engine.participation, "last_metrics": engine.history.last_metrics,
        "offsets": engine.history.offsets(), "loop": loop,
        "server_opt": getattr(engine, "opt_state", None),
        "started": getattr(engine, "started", None), "train_sums": getattr(engine, "train_sums", {}),
        "dp": getattr(engine, "dp", None),  # the DP stage: current clip, release counts, composed accountant
        "compression": getattr(getattr(engine, "compression", None), "memory", None),  # error-feedback memory
    }


def save(engine, next_round: int, loop: dict[str, Any] | None = None) -> Path:
    """Write the snapshot atomically (temp file + fsync + os.replace).

    Args:
        engine: the running engine.
        next_round: the round (async: version) to continue from.
        loop: async only, the event loop's state.

    Returns:
        The checkpoint file's path.
    """
    path = engine.history.out / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(snapshot(engine, next_round, loop), fh, protocol=pickle.HIGHEST_PROTOCOL)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load(out: Path) -> dict[str, Any]:
    """Read the checkpoint of the run folder `out`.

    Args:
        out: the run folder.

    Returns:
        The snapshot dict written by `save`.

    Raises:
        ValueError: one line, when the file is missing, unreadable or of another format.
    """
    path = Path(out) / FILE
    if not path.is_file():
        raise ValueError(f"{out}: no checkpoint to resume from ({FILE} is missing)")
    try:
        with path.open("rb") as fh:
            snap = pickle.load(fh)  # noqa: S301 — our own file, in the user's own results folder
    except (OSError, ValueError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise ValueError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(snap, dict) or snap.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fedsim checkpoint of format {FORMAT}")
    return snap


def truncate_history(out: Path, offsets: dict[str, int]) -> None:
    """Cut each JSONL file back to its checkpointed length (rows after it are recomputed).

    Args:
        out: the run folder.
        offsets: file stem -> byte length at the checkpoint (`History.offsets`).
    """
    for name, offset in offsets.items():
        path = Path(out) / f"{name}.jsonl"
        with path.open("r+b") as fh:
            fh.truncate(offset)


def restore(engine, snap: dict[str, Any]) -> int:
    """Put `snap` into a freshly built `engine`.

    Args:
        engine: an engine built from the same scenario.
        snap: the snapshot from `load`.

    Returns:
        The round (async: version) to continue from.
    """
    from fedsim.engine.state import Counters

    engine.now, engine.version = snap["now"], snap["version"]
    engine.params = np.asarray(snap["params"], dtype=np.float32)
    engine.state, engine.client_states = snap["state"], snap["client_states"]
    engine.opt_state = snap.get("server_opt")  # the server optimiser's moments (None without one)
    engine.participations = snap["participations"]
    if snap.get("started") is not None:
        engine.started = snap["started"]
    engine.train_sums = dict(snap.get("train_sums") or {})
    engine.counters = Counters(**snap["counters"])
    engine.participation = snap["participation"]
    engine.history.last_metrics = dict(snap["last_metrics"])
    if snap.get("dp") is not None:
        engine.dp = snap["dp"]
    if snap.get("compression") is not None:
        engine.compression.memory = snap["compression"]
    engine.resume_loop = snap.get("loop")  # async: fedsim.engine.async_loop.AsyncLoop.load_state
    return int(snap["next_round"])
