"""Every plugin family and its entries, as literal `"module:Attr"` strings.

A scenario block `{name: X, ...}` is built from the class that `FAMILIES[family][X]` names.
Entries are imported on first use only (like Gymnasium's registry), so reading this table
costs nothing: `fedsim validate` imports just the plugins a scenario names, and `fedsim
list` and the docs read the same table. An out-of-tree plugin is named directly as
`package.module:Class` in the scenario.
"""

from __future__ import annotations

import importlib
from typing import Mapping

from strategies import STRATEGIES

DATASETS: dict[str, str] = {
    "digits": "fedsim.data.datasets:Digits",
    "gaussian_mixture": "fedsim.data.datasets:GaussianMixture",
    "synthetic": "fedsim.data.datasets:Synthetic",
    "linear_regression": "fedsim.data.datasets:LinearRegression",
    "least_squares_groups": "fedsim.data.datasets:LeastSquaresGroups",
    "mnist": "fedsim.data.files:MNIST",
    "cifar10": "fedsim.data.files:CIFAR10",
    "npz": "fedsim.data.files:Npz",
    "hf_disk": "fedsim.data.files:HFDisk",
    "leaf": "fedsim.data.leaf:Leaf",
    "hf_natural": "fedsim.data.files:HFNatural",
}

PARTITIONS: dict[str, str] = {
    "iid": "fedsim.data.partition:Iid",
    "dirichlet": "fedsim.data.partition:Dirichlet",
    "shards": "fedsim.data.partition:Shards",
    "pathological": "fedsim.data.partition:Pathological",
    "quantity_skew": "fedsim.data.partition:QuantitySkew",
    "natural": "fedsim.data.partition:Natural",
}

MODELS: dict[str, str] = {
    "logreg": "fedsim.training.models:LogReg",
    "mlp": "fedsim.training.models:MLP",
    "cnn": "fedsim.training.models:CNN",
    "linear": "fedsim.training.models:Linear",
    "char_rnn": "fedsim.training.models:CharRNN",
    "torch_module": "fedsim.training.models:TorchModule",
}

PARTICIPATION: dict[str, str] = {
    "full": "fedsim.world.participation:Full",
    "uniform": "fedsim.world.participation:UniformSample",
    "bernoulli": "fedsim.world.participation:Bernoulli",
    "markov": "fedsim.world.participation:Markov",
    "cyclic": "fedsim.world.participation:Cyclic",
    "trace": "fedsim.world.participation:Trace",
    "fedscale_trace": "fedsim.world.participation:FedScaleTrace",
}

PROBS: dict[str, str] = {
    "constant": "fedsim.world.participation:ConstantProb",
    "uniform": "fedsim.world.participation:UniformProb",
    "dirichlet_over_labels": "fedsim.world.participation:DirichletOverLabels",
}

COMPUTE: dict[str, str] = {
    "constant": "fedsim.world.system:Constant",
    "lognormal": "fedsim.world.system:LogNormal",
    "exponential": "fedsim.world.system:Exponential",
    "uniform": "fedsim.world.system:UniformCompute",
    "linear_spread": "fedsim.world.system:LinearSpread",
    "per_client": "fedsim.world.system:PerClient",
    "fedscale_trace": "fedsim.world.system:FedScaleDevices",
}

EXECUTORS: dict[str, str] = {
    "inline": "fedsim.executors.inline:Inline",
    "ray": "fedsim.executors.ray_executor:Ray",
    "flower": "fedsim.flower.executor:Flower",
    "vectorized": "fedsim.executors.vectorized:Vectorized",
}

ROBUST: dict[str, str] = {
    "none": "fedsim.engine.robust:NoRobust",
    "median": "fedsim.engine.robust:Median",
    "trimmed_mean": "fedsim.engine.robust:TrimmedMean",
}

SERVER_OPT: dict[str, str] = {
    "none": "fedsim.strategy.server_opt:Identity",
    "sgd": "fedsim.strategy.server_opt:Sgd",
    "momentum": "fedsim.strategy.server_opt:Momentum",
    "adam": "fedsim.strategy.server_opt:Adam",
    "yogi": "fedsim.strategy.server_opt:Yogi",
    "adagrad": "fedsim.strategy.server_opt:Adagrad",
    "chain": "fedsim.strategy.server_opt:Chained",
}

SECAGG: dict[str, str] = {
    "none": "fedsim.pipeline.secagg:NoSecAgg",
    "secagg": "fedsim.pipeline.secagg:SecAgg",
    "secagg_plus": "fedsim.pipeline.secagg:SecAggPlus",
}

DP: dict[str, str] = {
    "none": "fedsim.pipeline.dp:NoDP",
    "central": "fedsim.pipeline.dp:CentralDP",
    "local": "fedsim.pipeline.dp:LocalDP",
}

COMPRESSION: dict[str, str] = {
    "none": "fedsim.pipeline.compression:NoCompression",
    "topk": "fedsim.pipeline.compression:TopK",
    "randomk": "fedsim.pipeline.compression:RandomK",
    "qsgd": "fedsim.pipeline.compression:QSGD",
    "sign": "fedsim.pipeline.compression:Sign",
    "quantize": "fedsim.pipeline.compression:Quantize",
}

# family (as used in `plugin(...)` fields) -> (table, name shown by `fedsim list`, scenario key)
FAMILIES: dict[str, Mapping[str, str]] = {
    "dataset": DATASETS,
    "partition": PARTITIONS,
    "model": MODELS,
    "participation": PARTICIPATION,
    "probs": PROBS,
    "compute": COMPUTE,
    "strategy": STRATEGIES,
    "executor": EXECUTORS,
    "robust": ROBUST,
    "server_opt": SERVER_OPT,
    "secagg": SECAGG,
    "dp": DP,
    "compression": COMPRESSION,
}

# family -> "module:function" returning the problems (list of one-line strings) of an
# out-of-tree `module:Class` plugin, checked when a scenario names it
CHECKS: dict[str, str] = {"strategy": "fedsim.strategy.contracts:strategy_problems"}

# family -> "module:function" run on every built plugin of the family, returning None or a
# (key, message) problem of that block as a whole (e.g. server_lr and server_opt both scaling
# the server step)
BLOCK_CHECKS: dict[str, str] = {"strategy": "fedsim.strategy.server_opt:conflict"}

# `fedsim list <what>` -> family, and where the family appears in a scenario
LISTINGS: dict[str, tuple[str, str]] = {
    "strategies": ("strategy", "strategy"),
    "datasets": ("dataset", "data.dataset"),
    "partitions": ("partition", "data.partition"),
    "models": ("model", "model"),
    "participation": ("participation", "participation"),
    "probs": ("probs", "participation.probs"),
    "compute": ("compute", "system.compute"),
    "executors": ("executor", "executor"),
    "robust": ("robust", "robust"),
    "server_opt": ("server_opt", "strategy.server_opt"),
    "secagg": ("secagg", "secagg"),
    "dp": ("dp", "dp"),
    "compression": ("compression", "compression"),
}


def import_entry(entry: str) -> object:
    """The object an entry point `package.module:Attr` names.

    Args:
        entry: `module:Attr`, e.g. `"strategies.fedavg:FedAvg"`.

    Returns:
        The attribute, imported on demand.

    Raises:
        ImportError: the module cannot be imported.
        AttributeError: the module has no such attribute.
    """
    module, _, attr = entry.partition(":")
    obj: object = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def names(family: str) -> list[str]:
    """The registered names of `family`, in table order.

    Args:
        family: a key of `FAMILIES`.

    Returns:
        The names a scenario may use in that family's `name:` key.
    """
    return list(FAMILIES[family])


def load(family: str, name: str) -> type:
    """The plugin class registered as `name` in `family` (imported on first use).

    Args:
        family: a key of `FAMILIES`.
        name: a registered name (not a `module:Class` path).

    Returns:
        The class.

    Raises:
        KeyError: `name` is not registered in `family`.
    """
    cls = import_entry(FAMILIES[family][name])
    assert isinstance(cls, type), f"{family} entry {name!r} is not a class"
    return cls


def name_of(family: str, obj: object) -> str:
    """The registry name of a plugin instance, or its `module:Class` path when unregistered.

    Args:
        family: a key of `FAMILIES`.
        obj: an instance of one of the family's classes.

    Returns:
        The name that rebuilds `obj`'s class from a scenario.
    """
    path = f"{type(obj).__module__}:{type(obj).__qualname__}"
    for name, entry in FAMILIES[family].items():
        if entry == path:
            return name
    return path


def table(family: str) -> dict[str, type]:
    """Every class of `family`, imported (for listings and docs; validation never needs it).

    Args:
        family: a key of `FAMILIES`.

    Returns:
        name -> class, in table order.
    """
    return {name: load(family, name) for name in FAMILIES[family]}
