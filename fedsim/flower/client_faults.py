"""Testing only: make a deployed client misbehave.

This checks that the server records and excludes it and that the global model stays intact.

Set per client with the hidden flag `fedsim deploy client ... --fault KIND[@ROUND]`
(node config key `fedsim-fault`); without `@ROUND` the fault hits every job.

    nan     the update's delta contains NaN          (rejected: non-finite values)
    inf     the update's delta contains +Inf         (rejected: non-finite values)
    shape   the delta has one element too many       (rejected: wrong shape)
    norm    the delta is scaled by 1e30              (rejected when a norm bound is set)
    crash   the ClientApp raises                     (Flower error reply -> failed job)
    hang    the ClientApp never answers              (failed job after the job timeout)
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from fedsim.types import JobResult

FAULTS = ("nan", "inf", "shape", "norm", "crash", "hang")


class InjectedFault(RuntimeError):
    """Raised by the `crash` fault."""


def parse(spec: str) -> tuple[str, int | None]:
    """'nan' -> ('nan', None); 'shape@2' -> ('shape', 2); one-line error otherwise."""
    kind, _, rnd = str(spec).partition("@")
    if kind not in FAULTS:
        raise ValueError(f"fault {spec!r}: kind must be one of {', '.join(FAULTS)}")
    if rnd and not rnd.isdigit():
        raise ValueError(f"fault {spec!r}: expected KIND@ROUND with an integer round")
    return kind, (int(rnd) if rnd else None)


def before(spec: str, round_index: int) -> None:
    """Faults that strike instead of replying (the ClientApp calls this after training).

    Args:
        spec: the node's `fedsim-fault` value, `KIND[@ROUND]` ("" = none).
        round_index: the job's round; a fault with `@ROUND` strikes only then.

    Raises:
        InjectedFault: for `crash`; `hang` never returns.
    """
    if not spec:
        return
    kind, rnd = parse(spec)
    if rnd is not None and rnd != round_index:
        return
    if kind == "crash":
        raise InjectedFault("injected fault: crash")
    if kind == "hang":
        while True:  # the server's job timeout must fire; the SuperNode ends this process
            time.sleep(60)


def after(spec: str, result: JobResult, round_index: int) -> JobResult:
    """Faults that corrupt a finished job's update (nan, inf, shape, norm).

    Args:
        spec: the node's `fedsim-fault` value, `KIND[@ROUND]` ("" = none).
        result: the honest result.
        round_index: the job's round.

    Returns:
        The result to send (a copy with a corrupted delta when the fault strikes).
    """
    if not spec or result.update is None:
        return result
    kind, rnd = parse(spec)
    if rnd is not None and rnd != round_index:
        return result
    delta = result.update.vector.copy()
    if kind == "nan":
        delta[0] = np.nan
    elif kind == "inf":
        delta[-1] = np.inf
    elif kind == "shape":
        delta = np.concatenate([delta, np.zeros(1, delta.dtype)])
    elif kind == "norm":
        delta = (delta + 1.0) * np.float32(1e30)
    else:
        return result
    return dataclasses.replace(result, update=dataclasses.replace(result.update, vector=delta))
