"""Assemble a run from a Scenario and write its results folder (DESIGN.md §3)."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fedsim import scenario as scenario_mod
from fedsim import seeding
from fedsim.config import plugin_name
from fedsim.data import FederatedData, federate
from fedsim.engine import Engine
from fedsim.history import History, clean
from fedsim.metrics import Evaluator
from fedsim.models import FlatModule, initial_params, resolve_device
from fedsim.participation import Context
from fedsim.system import SystemModel
from fedsim.types import Oracle


class RunError(Exception):
    """A run could not start; str() is one line."""


@dataclass(frozen=True)
class RunResult:
    out: Path
    params: np.ndarray
    final: dict[str, Any]
    summary: dict[str, Any]


def build_data(sc) -> FederatedData:
    d = sc.data
    try:
        return federate(d.dataset, d.partition, d.num_clients, d.test_fraction,
                        lambda stream: seeding.seed_of(sc.seed, stream))
    except ValueError as exc:
        msg = str(exc)
        raise RunError(msg if msg.startswith("data.") else f"data: {msg}") from None


def local_work(sc, data: FederatedData) -> np.ndarray:
    """Local steps per job for each client (what the system model multiplies by τ_c)."""
    c = sc.client
    if c.local_epochs:
        return c.local_epochs * np.maximum(1, -(-data.num_examples() // c.batch_size))
    return np.full(data.num_clients, c.local_steps, dtype=np.int64)


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("fedsim", "flwr", "torch", "ray", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def default_out(sc) -> Path:
    return Path("runs") / sc.name / time.strftime("%Y%m%d-%H%M%S")


def _prepare(sc):
    """Data, initial model, participation process, system model, local work, oracle."""
    data = build_data(sc)
    try:
        device = resolve_device(getattr(sc.model, "device", "cpu"))
        params = initial_params(sc.model, data.input_shape, data.num_classes, seeding.seed_of(sc.seed, "model_init"))
        eval_model = FlatModule(sc.model.build(data.input_shape, data.num_classes), device)
    except ValueError as exc:
        raise RunError(f"model: {exc}") from None
    ctx = Context(data.num_clients, seeding.rng(sc.seed, "participation"), seeding.rng(sc.seed, "probs"),
                  data.label_histograms)
    try:
        process = sc.participation.process(ctx)
    except ValueError as exc:
        raise RunError(f"participation: {exc}") from None
    probs = process.probs
    system = SystemModel(sc.system, data.num_clients, params.nbytes, seeding.rng(sc.seed, "system"))
    work = local_work(sc, data)
    oracle = Oracle(None if probs is None else np.asarray(probs), system.mean_durations(work), data.num_examples())
    return data, params, eval_model, process, system, work, oracle


def run(sc, out: Path | None = None, on_progress: Callable[[int, dict], None] | None = None,
        on_start: Callable[[Any], None] | None = None, executor: Any = None) -> RunResult:
    """Run scenario `sc`, writing everything under `out`.

    `executor` replaces `sc.executor.create()` (a Flower ServerApp passes the executor
    bound to its Grid). An executor with a `host(fn)` method runs the engine loop `fn`
    itself (the `flower` executor calls it inside a Flower ServerApp) and returns its value.
    """
    t0 = time.perf_counter()
    out = Path(out) if out is not None else default_out(sc)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenario.resolved.yaml").write_text(scenario_mod.to_yaml(sc), encoding="utf-8")

    executor = sc.executor.create() if executor is None else executor  # may start booting (ray)
    try:
        data, params, eval_model, process, system, work, oracle = _prepare(sc)
    except BaseException:
        executor.close()
        raise

    from fedsim.executors import Setup

    history = History(out)
    try:
        executor.start(Setup(data, sc.model, sc.client, sc.strategy, sc.seed))
        if on_start:
            on_start(sc)
        try:
            engine = Engine(sc, data, executor, history, Evaluator(data, eval_model), params, process, system,
                            work, oracle, on_progress)
        except ValueError as exc:  # a strategy that cannot start with this scenario
            raise RunError(f"strategy: {exc}") from None
        from fedsim.engine_async import Stalled

        host = getattr(executor, "host", None)
        try:
            final_params = host(engine.run) if host is not None else engine.run()
        except Stalled as exc:
            raise RunError(f"engine: {exc}") from None
    finally:
        executor.close()
        history.close()

    import torch

    torch.save({"params": torch.from_numpy(final_params.copy()), "model": plugin_name("model", sc.model)},
               out / "model.pt")
    final = dict(history.last_metrics)
    summary = {
        "name": sc.name, "seed": sc.seed, "strategy": plugin_name("strategy", sc.strategy),
        "executor": plugin_name("executor", sc.executor), "mode": sc.engine.mode,
        "final": final, "total_wall_time": time.perf_counter() - t0,
        "versions": _versions(), "git_commit": _git_commit(),
        "num_clients": data.num_clients, "num_params": int(params.size),
    }
    (out / "summary.json").write_text(json.dumps(clean(summary), indent=2) + "\n", encoding="utf-8")
    return RunResult(out, final_params, final, summary)
