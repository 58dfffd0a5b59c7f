"""Evaluation of the global model on the global test set and every client's local test split.

Also the fairness summaries of per-client accuracy (see fedsim.results.fairness).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from fedsim.data.federated import FederatedData
from fedsim.results.fairness import fairness
from fedsim.training.flat import FlatModule


class Evaluator:
    """Evaluates flat parameters on the driver, per-client numbers by segment sums.

    One forward pass per data set; no loop over clients. The test sets are copied to the
    model's device once, here.

    Args:
        data: the federation (its global test set and local test splits).
        model: the flat module to load parameters into.
        batch: examples per forward pass.
        clients: evaluate per-client numbers (and fairness) on these sorted client ids only;
            None = every client. Per-client arrays are aligned with `self.clients`.
    """

    def __init__(self, data: FederatedData, model: FlatModule, batch: int = 8192,
                 clients: np.ndarray | None = None):
        self.data, self.model, self.batch = data, model, batch
        dev = model.device
        self.regression = data.num_classes == 0
        self.x_test = torch.from_numpy(data.x_test).to(dev)
        self.y_test = torch.from_numpy(data.y_test).to(dev)
        vo = data.val_offsets
        if clients is None:
            self.clients = np.arange(data.num_clients)
            self.val_sizes = np.diff(vo)
            x_val, y_val = data.x_val, data.y_val
        else:  # gather the sample's local test rows once, vectorised
            self.clients = np.asarray(clients, dtype=np.int64)
            self.val_sizes = vo[self.clients + 1] - vo[self.clients]
            starts = np.repeat(vo[self.clients] - (np.cumsum(self.val_sizes) - self.val_sizes), self.val_sizes)
            rows = starts + np.arange(int(self.val_sizes.sum()))
            x_val, y_val = data.x_val[rows], data.y_val[rows]
        self.x_val = torch.from_numpy(x_val).to(dev)
        self.y_val = torch.from_numpy(y_val).to(dev)
        self.owner = np.repeat(np.arange(len(self.clients)), self.val_sizes)

    @torch.no_grad()
    def _per_example(self, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        losses, correct = [], []
        for i in range(0, len(y), self.batch):
            out = self.model.module(x[i:i + self.batch])
            yb = y[i:i + self.batch]
            if self.regression:
                losses.append(0.5 * (out.squeeze(-1) - yb) ** 2)
                correct.append(torch.full_like(yb, float("nan")))
            else:
                losses.append(F.cross_entropy(out, yb, reduction="none"))
                correct.append((out.argmax(1) == yb).float())
        if not losses:
            return np.zeros(0), np.zeros(0)
        return torch.cat(losses).double().cpu().numpy(), torch.cat(correct).double().cpu().numpy()

    def evaluate(self, params: np.ndarray, per_client: bool = True) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Evaluate one global model.

        Loss is cross-entropy for classification and ½(ŷ − y)² for regression, averaged over
        examples; accuracy is NaN for regression.

        Args:
            params: flat global parameters.
            per_client: also evaluate the local test splits (and the fairness summaries).

        Returns:
            (metrics, per-client arrays): metrics has test_loss, test_accuracy, the fairness keys
            when `per_client`, and optimum_distance ‖params − w*‖ when the data has an optimum;
            the arrays are {"loss", "accuracy"} aligned with `self.clients` (empty if not
            `per_client`).
        """
        self.model.load(params)
        loss, correct = self._per_example(self.x_test, self.y_test)
        out: dict[str, float] = {
            "test_loss": float(loss.mean()) if len(loss) else float("nan"),
            "test_accuracy": float("nan") if self.regression or not len(correct) else float(correct.mean()),
        }
        clients: dict[str, np.ndarray] = {}
        if per_client:
            vl, vc = self._per_example(self.x_val, self.y_val)
            n = len(self.clients)
            with np.errstate(invalid="ignore", divide="ignore"):
                cl = np.bincount(self.owner, weights=vl, minlength=n) / self.val_sizes
                ca = (np.full(n, np.nan) if self.regression
                      else np.bincount(self.owner, weights=vc, minlength=n) / self.val_sizes)
            clients = {"loss": cl, "accuracy": ca}
            if self.regression:
                # fairness over per-client loss is reported separately; accuracy-based keys stay NaN
                out.update(fairness(np.full(n, np.nan)))
                finite = cl[np.isfinite(cl)]
                out["client_loss_mean"] = float(finite.mean()) if len(finite) else float("nan")
                out["client_loss_worst10"] = (float(np.sort(finite)[-max(1, math.ceil(0.1 * len(finite))):].mean())
                                              if len(finite) else float("nan"))
            else:
                out.update(fairness(ca))
        if self.data.optimum is not None:
            out["optimum_distance"] = float(np.linalg.norm(params.astype(np.float64) - self.data.optimum))
        return out, clients
