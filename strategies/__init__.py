"""The strategy table: registry key -> class. One file per algorithm, nothing else here."""

from strategies.fedavg import FedAvg

STRATEGIES: dict[str, type] = {
    "fedavg": FedAvg,
}

__all__ = ["STRATEGIES"]
