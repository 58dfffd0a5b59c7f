"""The strategy table: registry key -> class. One file per algorithm, nothing else here."""

from strategies.admm import Admm
from strategies.admm_standard import AdmmStandard
from strategies.async_fedavg import AsyncFedAvg
from strategies.average_all import AverageAll
from strategies.average_participating import AverageParticipating
from strategies.fedau import FedAU
from strategies.fedavg import FedAvg
from strategies.fedbuff import FedBuff
from strategies.fedce import FedCE
from strategies.fedfix import FedFix
from strategies.fedprox import FedProx
from strategies.fedspeed import FedSpeed
from strategies.fedvarp import FedVarp
from strategies.known_probability import KnownProbability
from strategies.mifa import Mifa
from strategies.scaffold import Scaffold

STRATEGIES: dict[str, type] = {
    # synchronous
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "scaffold": Scaffold,
    "fedspeed": FedSpeed,
    "admm": Admm,
    "admm_standard": AdmmStandard,
    "fedau": FedAU,
    "average_participating": AverageParticipating,
    "average_all": AverageAll,
    "known_probability": KnownProbability,
    "mifa": Mifa,
    "fedvarp": FedVarp,
    "fedce": FedCE,
    # asynchronous
    "fedbuff": FedBuff,
    "fedfix": FedFix,
    "async_fedavg": AsyncFedAvg,
}

__all__ = ["STRATEGIES"]
