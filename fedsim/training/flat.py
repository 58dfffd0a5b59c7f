"""The flat-vector view of a torch module, the compute device, and initial parameters.

`FlatModule` makes a module's parameters views into one flat tensor, so that loading a
global model, reading a local one and the SGD step are single vector operations.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def resolve_device(device: str) -> torch.device:
    """Turn `model.device` into a torch device; "auto" picks CUDA when available.

    Args:
        device: "auto", "cpu", "cuda" or any torch device string.

    Returns:
        The device.

    Raises:
        ValueError: if "cuda" is asked for and none is available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device is 'cuda' but no CUDA device is available")
    return torch.device(device)


class FlatModule:
    """A module whose parameters are views into one flat float32 tensor `self.flat`.

    Args:
        module: the torch module; it is moved to `device` and its parameters re-pointed.
        device: where the flat tensor lives.
    """

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
        """Number of parameters (length of the flat vector)."""
        return self.flat.numel()

    def load(self, params: np.ndarray) -> None:
        """Copy a flat float32 vector of length `size` into the module's parameters, in place."""
        self.flat.copy_(torch.from_numpy(np.ascontiguousarray(params, dtype=np.float32)))

    def read(self) -> np.ndarray:
        """Return a host copy of the current parameters as a flat float32 array."""
        return self.flat.detach().cpu().numpy().copy()

    def flat_grad(self, loss: torch.Tensor) -> torch.Tensor:
        """Gradient of a scalar `loss` w.r.t. all parameters, as one flat tensor on the device."""
        grads = torch.autograd.grad(loss, self.params)
        return torch.cat([g.reshape(-1) for g in grads])


def initial_params(spec, input_shape: tuple[int, ...], num_classes: int, seed: int) -> np.ndarray:
    """The global model's initial flat parameters, from torch's default init under `seed`.

    Args:
        spec: a model plugin (`build(input_shape, num_classes)`).
        input_shape: shape of one example.
        num_classes: C (0 for regression).
        seed: the `model_init` stream's seed; torch's global RNG is left untouched.

    Returns:
        Flat float32 parameters in the module's parameter order.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = spec.build(input_shape, num_classes)
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).numpy().astype(np.float32)
