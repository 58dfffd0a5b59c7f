"""Client-side training in plain PyTorch.

The default local-SGD rule, and the `LocalTrainer` helpers that strategies with their own
client rule build on.

A `ClientRuntime` lives as long as its worker (inline process, Ray actor, Flower
ClientApp): it keeps the model, its flat parameter buffer and every client's data
resident, so a job costs one parameter copy in and one out.
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
from torch.nn import functional as F

from fedsim.data.federated import FederatedData
from fedsim.scenario.schema import ClientConfig
from fedsim.strategy.contracts import hook
from fedsim.training.flat import FlatModule, resolve_device
from fedsim.types import ClientTask, ClientUpdate, Job, JobResult


class ClientRuntime:
    """Resident model + data for running client jobs in one worker.

    Args:
        data: the federated data set (every client's train and local test split).
        model_spec: the scenario's `model:` block (builds the torch module; its `device`).
        client_cfg: the scenario's `client:` block (lr, lr_decay, batch size, local steps, ...).
        strategy: the strategy; its `client_update` hook, if any, is the client rule.
        threads: torch threads of this worker (0 = leave torch's setting alone).
    """

    def __init__(self, data: FederatedData, model_spec, client_cfg: ClientConfig, strategy: Any,
                 threads: int = 1):
        if threads > 0:
            torch.set_num_threads(threads)  # 1 thread per worker: deterministic and parallel-friendly
        self.data = data
        self.cfg = client_cfg
        self.strategy = strategy
        self.device = resolve_device(getattr(model_spec, "device", "cpu"))
        self.model = FlatModule(model_spec.build(data.input_shape, data.num_classes), self.device)
        self.regression = data.num_classes == 0
        self.x_train = torch.from_numpy(data.x_train).to(self.device)
        self.y_train = torch.from_numpy(data.y_train).to(self.device)
        self.x_val = torch.from_numpy(data.x_val).to(self.device)
        self.y_val = torch.from_numpy(data.y_val).to(self.device)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of the resident model on a batch.

        Cross-entropy for classification; 0.5 · mean squared error for regression (F_k = 1/(2n)‖Xw − y‖²).

        Args:
            x: the inputs.
            y: the labels (or targets).

        Returns:
            The scalar loss tensor (with its autograd graph).
        """
        out = self.model.module(x)
        if self.regression:
            return 0.5 * F.mse_loss(out.squeeze(-1), y)  # F_k = 1/(2n)‖Xw − y‖²
        return F.cross_entropy(out, y)

    def run(self, job: Job) -> JobResult:
        """Run one job; any exception becomes a failed JobResult, never an exception.

        The engine decides what a failed job does (`engine.on_client_error`).

        Args:
            job: the job (its task, and the client's stored state).

        Returns:
            The result: the update and the client's new state, or the error as one line
            with its `file:line`.
        """
        t0 = time.perf_counter()
        task = job.task
        try:
            trainer = LocalTrainer(self, task)
            rule = hook(self.strategy, "client_update")  # a ClientRule, else plain local SGD
            if rule is None:
                update, state = default_client_update(task, trainer, job.client_state)
            else:
                update, state = rule(task, trainer, job.client_state)
            return JobResult(job.id, task.client, update, state, None, time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 — a client failure must not stop the server
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
            return JobResult(job.id, task.client, None, job.client_state,
                             f"{type(exc).__name__}: {exc}{where}", time.perf_counter() - t0)


class LocalTrainer:
    """One client's view of the runtime during one job.

    The learning rate is γ_t = γ · lr_decay^t, t = `task.lr_step` (the round in sync mode, the
    client's own job count in async mode; see `ClientConfig`).

    Args:
        runtime: the worker's resident runtime.
        task: the job as the client sees it.
    """

    def __init__(self, runtime: ClientRuntime, task: ClientTask):
        self.rt = runtime
        self.task = task
        sl = runtime.data.train_slice(task.client)
        self.x = runtime.x_train[sl]
        self.y = runtime.y_train[sl]
        vs = runtime.data.val_slice(task.client)
        self.x_val = runtime.x_val[vs]
        self.y_val = runtime.y_val[vs]
        self.generator = torch.Generator().manual_seed(task.seed)
        cfg = runtime.cfg
        step = task.round if task.lr_step is None else task.lr_step
        self.lr = cfg.lr * cfg.lr_decay ** step  # γ_t = γ · lr_decay^t (ClientConfig.lr_decay)
        n = len(self.y)
        self.steps = cfg.local_epochs * -(-n // cfg.batch_size) if cfg.local_epochs else cfg.local_steps

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        """A float32 tensor on the training device, for `extra_grad` closures.

        Strategy files then need no torch import of their own.

        Args:
            array: the values.

        Returns:
            The tensor on the runtime's device.
        """
        return torch.as_tensor(np.asarray(array, dtype=np.float32), device=self.rt.device)

    @property
    def num_examples(self) -> int:
        """The number of this client's training examples (n_k)."""
        return int(len(self.y))

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Minibatches without replacement within an epoch; reshuffle when exhausted.

        Yields:
            (inputs, labels) batches, drawn from the job's own generator (seeded per job).
        """
        n, b = len(self.y), self.rt.cfg.batch_size
        while True:
            perm = torch.randperm(n, generator=self.generator).to(self.rt.device)
            for i in range(0, n, b):
                idx = perm[i:i + b]
                yield self.x[idx], self.y[idx]

    def sgd(self, params: np.ndarray, *, steps: int | None = None, lr: float | None = None,
            extra_grad: Callable[[torch.Tensor], torch.Tensor] | None = None,
            weight_decay: float | None = None, momentum: float | None = None,
            sam_rho: float = 0.0, clip_norm: float | None = None) -> tuple[np.ndarray, float]:
        """Local (optionally SAM-perturbed, corrected) SGD from `params`.

        Per step on minibatch ξ:  g = ∇ℓ(w; ξ)  [or ∇ℓ(w + ρ g/‖g‖; ξ) when sam_rho > 0]
        d = clip(g + extra_grad(w)) + wd·w;  m = μm + d;  w ← w − lr·m.

        Args:
            params: the start point.
            steps: local steps (default: the client block's, or its epochs in steps).
            lr: step size (default: the decayed γ_t).
            extra_grad: w -> a term added to every gradient (corrections, proximal terms).
            weight_decay: wd (default: the client block's).
            momentum: μ (default: the client block's).
            sam_rho: ρ of the sharpness-aware step (0 = plain SGD).
            clip_norm: gradient-norm clip (default: the client block's).

        Returns:
            The final flat parameters and the mean minibatch loss.
        """
        cfg = self.rt.cfg
        steps = self.steps if steps is None else steps
        lr = self.lr if lr is None else lr
        wd = cfg.weight_decay if weight_decay is None else weight_decay
        mu = cfg.momentum if momentum is None else momentum
        clip = cfg.clip_norm if clip_norm is None else clip_norm
        model = self.rt.model
        model.load(params)
        w = model.flat
        if self.num_examples == 0:
            return model.read(), float("nan")
        buf = torch.zeros_like(w) if mu > 0 else None
        batches = self.batches()
        total = 0.0
        for _ in range(steps):
            xb, yb = next(batches)
            loss = self.rt.loss(xb, yb)
            g = model.flat_grad(loss)
            total += float(loss.detach())
            with torch.no_grad():
                if sam_rho > 0:  # sharpness-aware step: gradient at the perturbed point, same batch
                    saved = w.clone()
                    w.add_(g, alpha=sam_rho / (float(g.norm()) + 1e-7))
                    with torch.enable_grad():
                        g = model.flat_grad(self.rt.loss(xb, yb))
                    w.copy_(saved)
                if extra_grad is not None:
                    g = g + extra_grad(w)
                if clip is not None:
                    norm = float(g.norm())
                    if norm > clip:
                        g = g * (clip / norm)
                if wd:
                    g = g + wd * w
                if buf is not None:
                    buf.mul_(mu).add_(g)
                    g = buf
                w.add_(g, alpha=-lr)
        return model.read(), total / steps

    @torch.no_grad()
    def evaluate(self, params: np.ndarray, split: Literal["val", "train"] = "val") -> dict[str, float]:
        """Loss and accuracy of `params` on this client's local test (`val`) or train data.

        Args:
            params: the model to evaluate.
            split: `val` (local test data) or `train`.

        Returns:
            {"loss", "accuracy"} (NaN when the split is empty; accuracy NaN for regression).
        """
        x, y = (self.x_val, self.y_val) if split == "val" else (self.x, self.y)
        self.rt.model.load(params)
        if len(y) == 0:
            return {"loss": float("nan"), "accuracy": float("nan")}
        out = self.rt.model.module(x)
        loss = float(self.rt.loss(x, y))
        acc = float("nan") if self.rt.regression else float((out.argmax(1) == y).float().mean())
        return {"loss": loss, "accuracy": acc}

    def make_update(self, new_params: np.ndarray, loss: float, up: Any = None, **metrics: float) -> ClientUpdate:
        """The delta update new − received, with the train loss and extra scalar metrics.

        Args:
            new_params: the local model after training.
            loss: the mean training loss of the job.
            up: the strategy's up message (an instance of its `up_type`), or None.
            **metrics: further scalars for inspection.

        Returns:
            A `ClientUpdate` of kind "delta".
        """
        delta = new_params.astype(np.float32) - self.task.params.astype(np.float32)
        return ClientUpdate(self.task.client, delta, self.num_examples, self.task.version,
                            {"train_loss": loss, **metrics}, up)

    def make_model_update(self, model: np.ndarray, loss: float, **metrics: float) -> ClientUpdate:
        """An update that carries the local model itself (ADMM-style strategies, `sends = "model"`).

        Args:
            model: the local model to upload.
            loss: the training loss to report.
            **metrics: further scalars for inspection.

        Returns:
            A `ClientUpdate` of kind "model".
        """
        return ClientUpdate(self.task.client, np.asarray(model, dtype=np.float32), self.num_examples,
                            self.task.version, {"train_loss": loss, **metrics}, None, "model")


def default_client_update(task: ClientTask, trainer: LocalTrainer, state: Any) -> tuple[ClientUpdate, Any]:
    """Plain local SGD (FedAvg's client: McMahan et al., AISTATS 2017, Alg. 1 ClientUpdate).

    Args:
        task: the job.
        trainer: the client's trainer.
        state: the client's state (kept unchanged).

    Returns:
        The delta update and the unchanged state.
    """
    new, loss = trainer.sgd(task.params)
    return trainer.make_update(new, loss), state
