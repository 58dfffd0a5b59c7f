"""Model specs: logistic regression, MLP, small CNN, linear regression, character RNN, your own module.

Each spec is a frozen dataclass (the `model:` block of a scenario) whose `build` returns a
torch module. torch is imported inside `build` only, so that validating a scenario never
loads it; `fedsim.training.flat` has the flat-parameter view the runtime trains through.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from fedsim.errors import ConfigError
from fedsim.scenario.fields import bounded

if TYPE_CHECKING:
    from torch import nn

Device = Literal["auto", "cpu", "cuda"]


def _flat_dim(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))


@dataclass(frozen=True, kw_only=True)
class LogReg:
    """Multinomial logistic regression: one linear layer on the flattened input."""

    device: Device = "auto"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """Build a freshly initialised torch module (torch's default init, under the caller's seed).

        Args:
            input_shape: shape of one example (flattened).
            num_classes: C; 0 (regression) gets a single output.

        Returns:
            The module, on the CPU.
        """
        from torch import nn

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
        """Reject hidden widths outside 1..1000000.

        Raises:
            ValueError: for a bad width.
        """
        if any(h < 1 or h > 1_000_000 for h in self.hidden):
            raise ValueError(f"hidden widths must be in 1..1000000, got {list(self.hidden)}")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """Build a freshly initialised torch module (torch's default init, under the caller's seed).

        Args:
            input_shape: shape of one example (flattened).
            num_classes: C; 0 (regression) gets a single output.

        Returns:
            The module, on the CPU.
        """
        from torch import nn

        layers: list[nn.Module] = [nn.Flatten()]
        width = _flat_dim(input_shape)
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, max(num_classes, 1)))
        return nn.Sequential(*layers)


@dataclass(frozen=True, kw_only=True)
class CNN:
    """Two 3x3 conv layers, then a hidden FC layer: the FedAU paper's small CNN, sized to the input.

    Each conv is followed by ReLU and, when the image is at least 4 pixels on a side, a 2x2
    max-pool.

    Args:
        channels: conv widths.  hidden: FC width.

    References:
        Wang & Ji, ICLR 2024 (FedAU), experiments; official code IBM/fedau `model/` (the
        SVHN / FashionMNIST CNN: two 3x3 conv(32) layers, then FC→128→classes).
    """

    channels: tuple[int, int] = (32, 32)
    hidden: int = bounded(128, ge=1, le=100_000)
    device: Device = "auto"

    def validate(self) -> None:
        """Refuse conv widths outside 1..100000 (a 0-channel layer would fail deep in torch)."""
        if not self.channels or any(c < 1 or c > 100_000 for c in self.channels):
            raise ValueError(f"channels must be conv widths in 1..100000, got {list(self.channels)}")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """Build a freshly initialised torch module (torch's default init, under the caller's seed).

        Args:
            input_shape: shape of one example (C, H, W).
            num_classes: C; 0 (regression) gets a single output.

        Returns:
            The module, on the CPU.

        Raises:
            ValueError: if the input is not image-shaped.
        """
        from torch import nn

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

    regression: ClassVar[bool] = True  # one real output: only for regression data

    device: Device = "auto"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """Build a freshly initialised torch module (torch's default init, under the caller's seed).

        Args:
            input_shape: shape of one example (flattened).
            num_classes: ignored: the output is one scalar.

        Returns:
            The module, on the CPU.
        """
        from torch import nn

        return nn.Sequential(nn.Flatten(), nn.Linear(_flat_dim(input_shape), 1))


@dataclass(frozen=True, kw_only=True)
class CharRNN:
    """Next-character model: embedding → `layers` LSTM (or GRU) layers → linear, on the last step.

    For token inputs (int64 ids, shape (n, T)), e.g. LEAF's Shakespeare (`leaf` with
    `task: shakespeare`): inputs and outputs share the vocabulary, so it has `num_classes`
    embeddings. The vectorized executor cannot batch it (torch.func.vmap has no rule for
    nn.LSTM / nn.GRU), so a scenario pairing them is refused when it loads.

    Args:
        cell: `lstm` or `gru`.
        embedding: embedding width (8 in LEAF and McMahan et al.).
        hidden: recurrent width (256 in LEAF's reference; smaller by default for CPU runs).
        layers: stacked recurrent layers (2 in LEAF's reference).

    References:
        H. B. McMahan et al., "Communication-Efficient Learning of Deep Networks from
        Decentralized Data", AISTATS 2017 (§3, the Shakespeare LSTM); S. Caldas et al.,
        "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097 (§3, its reference model).
    """

    vectorizable: ClassVar[bool] = False  # no vmap batching rule for recurrent layers

    cell: Literal["lstm", "gru"] = "lstm"
    embedding: int = bounded(8, ge=1, le=65_536)
    hidden: int = bounded(64, ge=1, le=65_536)
    layers: int = bounded(2, ge=1, le=16)
    device: Device = "auto"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """Build a freshly initialised torch module (torch's default init, under the caller's seed).

        Args:
            input_shape: (T,), the window length of the token inputs.
            num_classes: V, the vocabulary (token ids and output classes).

        Returns:
            The module, on the CPU.

        Raises:
            ValueError: for inputs that are not token windows or regression data.
        """
        from fedsim.training.charnet import CharNet

        if len(input_shape) != 1:
            raise ValueError(f"char_rnn needs token windows of shape (T,), got inputs of shape {input_shape}")
        if num_classes < 2:
            raise ValueError("char_rnn needs classification data over a vocabulary")
        return CharNet(num_classes, self.embedding, self.hidden, self.layers, self.cell)


@dataclass(frozen=True, kw_only=True)
class TorchModule:
    """Your own torch network: the class `module` names is imported and called with `kwargs`.

    For a Flower ClientApp of your own (`fedsim deploy server --client-app`, docs/how-to-deploy.md):
    the server's model is then the very class the app trains, e.g. quickstart-pytorch's `Net`,
    so the ArrayRecord it sends has the app's own state_dict keys and shapes. The class decides
    its input and output shapes (fedsim passes neither); it must return one row of logits per
    example (or one output for regression). The vectorized executor is refused (an arbitrary
    module may have no batching rule).

    Args:
        module: `package.module:Class` (or a function returning an `nn.Module`), importable
            where fedsim runs (e.g. `PYTHONPATH=.` or an installed package).
        kwargs: keyword arguments for the call (default none).

    Example:
        model: {name: torch_module, module: "pytorchexample.task:Net"}
    """

    vectorizable: ClassVar[bool] = False

    module: str
    kwargs: dict[str, Any] | None = None
    device: Device = "auto"

    def validate(self) -> None:
        """Check the `module:Class` form (the import itself happens when the run builds the model).

        Raises:
            ConfigError: for `module`, one line.
        """
        name, sep, attr = self.module.partition(":")
        if not sep or not name or not attr or not all(p.isidentifier() for p in (*name.split("."), *attr.split("."))):
            raise ConfigError("module", f"expected package.module:Class, got {self.module!r}")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """Import the class and build the module (torch's default init, under the caller's seed).

        Args:
            input_shape: shape of one example (not passed on: the class decides).
            num_classes: C (not passed on).

        Returns:
            The module, on the CPU.

        Raises:
            ValueError: one line, when the class cannot be imported or does not build an nn.Module.
        """
        from torch import nn

        name, _, attr = self.module.partition(":")
        try:
            obj: Any = importlib.import_module(name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"torch_module {self.module!r} cannot be imported: {exc}") from None
        try:
            net = obj(**(self.kwargs or {}))
        except Exception as exc:  # the user's constructor: any failure is reported in one line
            raise ValueError(f"torch_module {self.module!r}: building it failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(net, nn.Module):
            raise ValueError(f"torch_module {self.module!r} returned a {type(net).__name__}, not a torch nn.Module")
        return net
