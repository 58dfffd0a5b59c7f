"""A torch-free harness for the async event loop: the real `Engine` and `AsyncLoop`, driven
by fixed per-client durations, a scripted participation process and a fake executor whose
clients take exact gradient steps on 1-d quadratics ½(θ − c_i)² (the analytic check of
Fraboni et al.'s schedules, JMLR 2023) and which returns results in the reverse of
submission order (to prove that commits never follow executor order)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from fedsim.engine.engine import Engine
from fedsim.results.history import History
from fedsim.scenario.schema import ChannelConfig, SystemConfig
from fedsim.types import ClientUpdate, Job, JobResult, Oracle
from fedsim.world.system import SystemModel


@dataclass(frozen=True)
class Fixed:
    """Compute plugin: τ_c given explicitly."""

    times: tuple[float, ...]

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(self.times, dtype=np.float64)


class AlwaysOn:
    probs = None

    def __init__(self, n: int):
        self.n = n

    def online(self, step: int, time: float) -> np.ndarray:
        return np.ones(self.n, dtype=bool)


class Scripted:
    """online(step) = masks[step] (the last mask repeats)."""

    probs = None

    def __init__(self, masks: Sequence[Sequence[bool]]):
        self.masks = [np.asarray(m, dtype=bool) for m in masks]
        self.calls: list[int] = []

    def online(self, step: int, time: float) -> np.ndarray:
        self.calls.append(step)
        return self.masks[min(step, len(self.masks) - 1)].copy()


class QuadraticExecutor:
    """Client i runs `steps` GD steps of size `lr` on ½(θ − c_i)²; LIFO result order."""

    def __init__(self, centers: Sequence[float], lr: float = 0.1, steps: int = 1):
        self.c = np.asarray(centers, dtype=np.float64)
        self.lr, self.steps = lr, steps
        self.queue: list[Job] = []
        self.submitted: list[int] = []

    def submit(self, jobs: Sequence[Job]) -> None:
        self.queue.extend(jobs)
        self.submitted.extend(j.id for j in jobs)

    def next_result(self) -> JobResult:
        job = self.queue.pop()  # newest first: the opposite of virtual-time order, often
        t = job.task
        x = t.params.astype(np.float64)
        for _ in range(self.steps):
            x = x - self.lr * (x - self.c[t.client])
        delta = (x - t.params.astype(np.float64)).astype(np.float32)
        return JobResult(job.id, t.client, ClientUpdate(t.client, delta, 10, t.version))


class RecordingEvaluator:
    def __init__(self):
        self.points: list[float] = []

    def evaluate(self, params: np.ndarray, per_client: bool = True):
        self.points.append(float(params[0]))
        return {"theta": float(params[0])}, {}


def build(tmp: Path, times: Sequence[float], strategy: Any, *, centers: Sequence[float] | None = None,
          participation: Any = None, lr: float = 0.1, seed: int = 0, eval_every: int | None = None,
          eval_every_time: float | None = None, **engine: Any) -> tuple[Engine, QuadraticExecutor, RecordingEvaluator]:
    n = len(times)
    eng_cfg = dict(mode="async", concurrency=n, max_versions=None, max_time=None, max_updates=None,
                   slot=1.0, redispatch="sample", drop_offline=False)
    eng_cfg.update(engine)
    sc = SimpleNamespace(seed=seed, strategy=strategy, engine=SimpleNamespace(**eng_cfg),
                         metrics=SimpleNamespace(eval_every=eval_every, eval_every_time=eval_every_time,
                                                 client_metrics=False),
                         channel=ChannelConfig())
    data = SimpleNamespace(num_clients=n, num_examples=lambda: np.full(n, 10))
    system = SystemModel(SystemConfig(compute=Fixed(tuple(times)), time_per="job"), n, 4, np.random.default_rng(0))
    work = np.ones(n, dtype=np.int64)
    oracle = Oracle(None, system.mean_durations(work), np.full(n, 10))
    executor = QuadraticExecutor(centers if centers is not None else np.zeros(n), lr)
    evaluator = RecordingEvaluator()
    history = History(tmp)
    eng = Engine(sc, data, executor, history, evaluator, np.zeros(1, dtype=np.float32),
                 participation or AlwaysOn(n), system, work, oracle)
    return eng, executor, evaluator


def events(tmp: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp / "events.jsonl").read_text().splitlines() if line]


def run(eng: Engine, tmp: Path) -> list[dict[str, Any]]:
    eng.run()
    eng.history.close()
    return events(tmp)
