"""The strategy table: registry key -> class. One file per algorithm, nothing else here."""

from strategies.admm import Admm
from strategies.admm_standard import AdmmStandard
from strategies.fedavg import FedAvg
from strategies.fedprox import FedProx
from strategies.fedspeed import FedSpeed
from strategies.scaffold import Scaffold

STRATEGIES: dict[str, type] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "scaffold": Scaffold,
    "fedspeed": FedSpeed,
    "admm": Admm,
    "admm_standard": AdmmStandard,
}

__all__ = ["STRATEGIES"]
