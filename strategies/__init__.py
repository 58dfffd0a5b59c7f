"""The strategy table: registry key -> class. One file per algorithm, nothing else here."""

from strategies.admm import Admm
from strategies.admm_standard import AdmmStandard
from strategies.async_fedavg import AsyncFedAvg
from strategies.fedavg import FedAvg
from strategies.fedbuff import FedBuff
from strategies.fedfix import FedFix
from strategies.fedprox import FedProx
from strategies.fedspeed import FedSpeed
from strategies.scaffold import Scaffold

STRATEGIES: dict[str, type] = {
    # synchronous
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "scaffold": Scaffold,
    "fedspeed": FedSpeed,
    "admm": Admm,
    "admm_standard": AdmmStandard,
    # asynchronous
    "fedbuff": FedBuff,
    "fedfix": FedFix,
    "async_fedavg": AsyncFedAvg,
}

__all__ = ["STRATEGIES"]
