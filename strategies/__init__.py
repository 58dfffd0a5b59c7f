"""The strategy table: registry key -> class. One file per algorithm, nothing else here."""

from strategies.async_fedavg import AsyncFedAvg
from strategies.fedavg import FedAvg
from strategies.fedbuff import FedBuff
from strategies.fedfix import FedFix

STRATEGIES: dict[str, type] = {
    "fedavg": FedAvg,
    "fedbuff": FedBuff,
    "fedfix": FedFix,
    "async_fedavg": AsyncFedAvg,
}

__all__ = ["STRATEGIES"]
