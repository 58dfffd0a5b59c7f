"""The flat-vector view of a torch module, the compute device, and initial parameters.

`FlatModule` makes a module's parameters views into one flat tensor, so that loading a
global model, reading a local one and the SGD step are single vector operations.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device is 'cuda' but no CUDA device is available")
    return torch.device(device)


class FlatModule:
    """A module whose parameters are views into one flat float32 tensor `self.flat`."""

    def __init__(self, module: nn.Module, device: torch.device):
        self.module = module.to(device)
        self.device = device
        self.params = [p for p in self.module.parameters()]
        total = sum(p.numel() for p in self.params)
        self.flat = torch.zeros(total, dtype=torch.float32, device=device)
        offset = 0
        for p in self.params:
            n = p.numel()
            self.flat[offset:offset + n].copy_(p.data.reshape(-1))
            p.data = self.flat[offset:offset + n].view_as(p)
            offset += n

    @property
    def size(self) -> int:
        return self.flat.numel()

    def load(self, params: np.ndarray) -> None:
        self.flat.copy_(torch.from_numpy(np.ascontiguousarray(params, dtype=np.float32)))

    def read(self) -> np.ndarray:
        return self.flat.detach().cpu().numpy().copy()

    def flat_grad(self, loss: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(loss, self.params)
        return torch.cat([g.reshape(-1) for g in grads])


def initial_params(spec, input_shape: tuple[int, ...], num_classes: int, seed: int) -> np.ndarray:
    """The global model's initial flat parameters, from torch's default init under `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = spec.build(input_shape, num_classes)
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).numpy().astype(np.float32)
