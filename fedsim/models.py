"""Models (logistic regression, MLP, small CNN, linear regression) and the flat-vector view.

`FlatModule` makes a module's parameters views into one flat tensor, so that loading a
global model, reading a local one and the SGD step are single vector operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from fedsim.config import bounded

Device = Literal["auto", "cpu", "cuda"]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device is 'cuda' but no CUDA device is available")
    return torch.device(device)


def _flat_dim(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))


@dataclass(frozen=True, kw_only=True)
class LogReg:
    """Multinomial logistic regression: one linear layer on the flattened input."""

    device: Device = "auto"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(_flat_dim(input_shape), max(num_classes, 1)))


@dataclass(frozen=True, kw_only=True)
class MLP:
    """Fully connected network with ReLU hidden layers.

    Args:
        hidden: widths of the hidden layers.
    """

    hidden: tuple[int, ...] = (64,)
    device: Device = "auto"

    def validate(self) -> None:
        if any(h < 1 or h > 1_000_000 for h in self.hidden):
            raise ValueError(f"hidden widths must be in 1..1000000, got {list(self.hidden)}")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        width = _flat_dim(input_shape)
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, max(num_classes, 1)))
        return nn.Sequential(*layers)


@dataclass(frozen=True, kw_only=True)
class CNN:
    """Two 3x3 conv layers (ReLU, 2x2 max-pool after each when the image is large enough),
    then a hidden FC layer — the FedAU paper's small CNN shape, sized to the input.

    Args:
        channels: conv widths.  hidden: FC width.
    """

    channels: tuple[int, int] = (32, 32)
    hidden: int = bounded(128, ge=1, le=100_000)
    device: Device = "auto"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs image-shaped inputs (C, H, W), got shape {input_shape}")
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for out in self.channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
            if min(h, w) >= 4:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out
        layers += [nn.Flatten(), nn.Linear(c * h * w, self.hidden), nn.ReLU(),
                   nn.Linear(self.hidden, max(num_classes, 1))]
        return nn.Sequential(*layers)


@dataclass(frozen=True, kw_only=True)
class Linear:
    """Linear regression y = wᵀx + b (flat layout: w then b, as `optimum` is reported)."""

    device: Device = "auto"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(_flat_dim(input_shape), 1))


MODELS: dict[str, type] = {"logreg": LogReg, "mlp": MLP, "cnn": CNN, "linear": Linear}


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
