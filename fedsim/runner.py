"""Assemble a run from a Scenario and write its results folder (layout: docs/tutorial.md)."""

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
from fedsim.data.federated import FederatedData, federate
from fedsim.engine import checkpoint
from fedsim.engine.engine import Engine
from fedsim.errors import RunError, Stalled
from fedsim.executors import Setup
from fedsim.results.history import History, clean
from fedsim.scenario.fields import plugin_name
from fedsim.training.evaluation import Evaluator
from fedsim.training.flat import FlatModule, initial_params, resolve_device
from fedsim.types import Oracle
from fedsim.world.participation import Context
from fedsim.world.system import SystemModel


def available_memory() -> int | None:
    """Bytes of memory the kernel says a new allocation can use (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_memory(what: str, need: int) -> None:
    avail = available_memory()
    if avail is not None and need > avail:
        raise RunError(f"{what} needs about {need / 2**30:.1f} GiB of memory but only "
                       f"{avail / 2**30:.1f} GiB is available")


@dataclass(frozen=True)
class RunResult:
    """What `run` returns: the run folder, final flat parameters, last metrics and the summary.

    `final` is the last evaluation record (as in metrics.jsonl) and `summary` the contents of
    summary.json.
    """

    out: Path
    params: np.ndarray
    final: dict[str, Any]
    summary: dict[str, Any]


def build_data(sc) -> FederatedData:
    """Build the federation of scenario `sc`, after checking its memory estimate.

    Args:
        sc: the scenario.

    Returns:
        The federated data.

    Raises:
        RunError: one line starting `data`, for bad data, a failing partitioner or too little memory.
    """
    d = sc.data
    estimate = getattr(d.dataset, "memory_estimate", None)
    if estimate is not None:
        _check_memory("data", int(estimate(d.num_clients)))
    try:
        return federate(d.dataset, d.partition, d.num_clients, d.test_fraction,
                        lambda stream: seeding.seed_of(sc.seed, stream), d.hard_clients)
    except ValueError as exc:
        msg = str(exc)
        raise RunError(msg if msg.startswith("data.") else f"data: {msg}") from None
    except MemoryError as exc:
        raise RunError(f"data: out of memory ({exc})") from None


def _count_params(spec, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Parameter count without allocating (the module is built on torch's meta device)."""
    import torch

    with torch.device("meta"):
        module = spec.build(input_shape, num_classes)
    return sum(p.numel() for p in module.parameters())


def build_model(sc, data: FederatedData):
    """(initial flat params, evaluation model), with size checked before anything is allocated.

    Args:
        sc: the scenario (its `model:` block and seed).
        data: the federation (input shape and number of classes).

    Returns:
        (float32 initial parameters, a `FlatModule` on the model's device for evaluation).

    Raises:
        RunError: one line starting `model`, for a bad model, device or too little memory.
    """
    try:
        n = _count_params(sc.model, data.input_shape, data.num_classes)
        _check_memory(f"model ({n:,} parameters)", 16 * 4 * n)  # global, eval and client copies, grads, deltas
        device = resolve_device(getattr(sc.model, "device", "cpu"))
        params = initial_params(sc.model, data.input_shape, data.num_classes, seeding.seed_of(sc.seed, "model_init"))
        eval_model = FlatModule(sc.model.build(data.input_shape, data.num_classes), device)
    except (ValueError, RuntimeError, MemoryError) as exc:
        raise RunError(f"model: {exc}") from None
    return params, eval_model


def eval_sample(sc, data: FederatedData) -> np.ndarray | None:
    """The fixed clients evaluated one by one (`metrics.client_sample`), sorted; None = all.

    Args:
        sc: the scenario.
        data: the federation.

    Returns:
        Sorted client ids drawn from the `eval_sample` stream, or None for every client.
    """
    m = sc.metrics.client_sample
    if m is None or m >= data.num_clients:
        return None
    return np.sort(seeding.rng(sc.seed, "eval_sample").choice(data.num_clients, m, replace=False))


def local_work(sc, data: FederatedData) -> np.ndarray:
    """Local steps per job for each client (what the system model multiplies by τ_c).

    Args:
        sc: the scenario (its `client:` block).
        data: the federation (local dataset sizes, for `local_epochs`).

    Returns:
        (N,) int64 steps: local_epochs · ceil(n_k / batch_size), or local_steps for everyone.
    """
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


def _compute_facts(sc) -> dict[str, Any]:
    """What decides the floating-point results besides the scenario.

    The device the model ran on (after `auto` was resolved), torch's thread counts and its
    determinism switches: two runs are bit-comparable only when these agree.
    """
    import torch

    device = resolve_device(getattr(sc.model, "device", "cpu"))
    facts: dict[str, Any] = {
        "model_device": getattr(sc.model, "device", "cpu"), "device": str(device),
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "client_threads": int(getattr(sc.executor, "threads", 1)),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }
    if device.type == "cuda":
        facts["cuda_device_name"] = torch.cuda.get_device_name(device)
        facts["cuda_version"] = torch.version.cuda
    return facts


def default_out(sc) -> Path:
    """The run folder when none is given: runs/<scenario name>/<local time YYYYmmdd-HHMMSS>."""
    return Path("runs") / sc.name / time.strftime("%Y%m%d-%H%M%S")


def _prepare(sc):
    """Data, initial model, participation process, system model, local work, oracle."""
    data = build_data(sc)
    params, eval_model = build_model(sc, data)
    ctx = Context(data.num_clients, seeding.rng(sc.seed, "participation"), seeding.rng(sc.seed, "probs"),
                  data.label_histograms)
    try:
        process = sc.participation.process(ctx)
    except ValueError as exc:
        raise RunError(f"participation: {exc}") from None
    probs = process.probs
    system = SystemModel(sc.system, data.num_clients, params.nbytes, seeding.rng(sc.seed, "system"),
                         batch_size=sc.client.batch_size)
    work = local_work(sc, data)
    oracle = Oracle(None if probs is None else np.asarray(probs), system.mean_durations(work), data.num_examples())
    return data, params, eval_model, process, system, work, oracle


def open_run_sinks(sc, out: Path, resume: bool = False):
    """Open the scenario's `metrics.sinks` for the run folder `out` (fedsim.results.sinks).

    Args:
        sc: the scenario.
        out: the run folder.
        resume: whether the run continues from a checkpoint (metrics.jsonl already truncated).

    Returns:
        A `Sinks` fed by History, or None when the scenario names no sink.
    """
    if not sc.metrics.sinks:
        return None
    from fedsim.results.history import read_jsonl
    from fedsim.results.rundata import flatten
    from fedsim.results.sinks import RunInfo, open_sinks
    from fedsim.scenario.fields import to_raw

    previous = read_jsonl(out / "metrics.jsonl") if resume and (out / "metrics.jsonl").exists() else []
    info = RunInfo(out, sc.name, out.resolve().name, flatten(to_raw(sc)), scenario_mod.to_yaml(sc), previous)
    return open_sinks(sc.metrics.sinks, info)


def run(sc, out: Path | None = None, on_progress: Callable[[int, dict], None] | None = None,
        on_start: Callable[[Any], None] | None = None, resume: bool = False,
        executor: Any = None) -> RunResult:
    """Run scenario `sc`, writing everything under `out`.

    An executor with a `host(fn)` method runs the engine loop `fn` itself (the `flower`
    executor calls it inside a Flower ServerApp) and returns its value.

    Args:
        sc: the validated scenario.
        out: the run folder; default `default_out(sc)`.
        on_progress: called with (round or version, metrics record) after each evaluation.
        on_start: called with `sc` once the executor has started.
        resume: continue the run in `out` from its checkpoint (fedsim.engine.checkpoint).
        executor: replaces `sc.executor.create()` (a Flower ServerApp passes the executor bound
            to its Grid).

    Returns:
        The run's result.

    Raises:
        RunError: one line, for any failure the scenario (not a bug) explains.
    """
    t0 = time.perf_counter()
    out = Path(out) if out is not None else default_out(sc)
    snap = None
    if resume:
        try:
            snap = checkpoint.load(out)
            if snap["mode"] != sc.engine.mode:
                raise ValueError(f"checkpoint is for engine.mode {snap['mode']!r}")
            checkpoint.truncate_history(out, snap["offsets"])
        except (ValueError, OSError) as exc:
            raise RunError(f"resume: {exc}") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            (out / "scenario.resolved.yaml").write_text(scenario_mod.to_yaml(sc), encoding="utf-8")
    except OSError as exc:
        raise RunError(f"cannot write results to {out}: {exc.strerror or exc}") from None

    executor = sc.executor.create() if executor is None else executor  # may start booting (ray)
    try:
        data, params, eval_model, process, system, work, oracle = _prepare(sc)
    except BaseException:
        executor.close()
        raise
    probs = process.probs
    # The true p_n, for plots only (FedAU estimates vs 1/p); the server never reads this file.
    (out / "participation.json").write_text(json.dumps(
        {"participation": plugin_name("participation", sc.participation),
         "probs": None if probs is None else [float(p) for p in np.asarray(probs)]}) + "\n", encoding="utf-8")

    import torch


    # The server evaluates with `executor.threads` torch threads (default 1) on every
    # executor: the same arithmetic everywhere, and, with Ray actors or Flower clients
    # beside it, no idle OpenMP threads spinning on the cores the client workers need.
    torch.set_num_threads(int(getattr(sc.executor, "threads", 1)))
    sinks = open_run_sinks(sc, out, resume)
    history = History(out, append=resume, sinks=sinks)
    try:
        executor.start(Setup(data, sc.model, sc.client, sc.strategy, sc.seed))
        if on_start:
            on_start(sc)
        try:
            evaluator = Evaluator(data, eval_model, clients=eval_sample(sc, data))
            engine = Engine(sc, data, executor, history, evaluator, params, process, system, work, oracle, on_progress)
        except ValueError as exc:  # a strategy that cannot start with this scenario
            raise RunError(f"strategy: {exc}") from None
        if snap is not None:
            engine.start_round = checkpoint.restore(engine, snap)

        host = getattr(executor, "host", None)  # the flower executor runs the loop inside its ServerApp
        try:
            final_params = host(engine.run) if host is not None else engine.run()
        except Stalled as exc:
            raise RunError(f"engine: {exc}") from None
    except BaseException:
        if sinks is not None:
            sinks.close(failed=True)
        raise
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
        "compute": _compute_facts(sc),
    }
    if getattr(engine, "dp", None) is not None:  # ε(δ), accountant and the sampling assumption
        summary["dp"] = engine.dp.summary()
    (out / "summary.json").write_text(json.dumps(clean(summary), indent=2) + "\n", encoding="utf-8")
    if sinks is not None:
        sinks.close(clean(summary))
    return RunResult(out, final_params, final, summary)
