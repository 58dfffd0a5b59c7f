"""The strategy table: registry key -> class. One file per algorithm, nothing else here."""

from strategies.average_all import AverageAll
from strategies.average_participating import AverageParticipating
from strategies.fedau import FedAU
from strategies.fedavg import FedAvg
from strategies.fedce import FedCE
from strategies.fedvarp import FedVarp
from strategies.known_probability import KnownProbability
from strategies.mifa import Mifa

STRATEGIES: dict[str, type] = {
    "fedavg": FedAvg,
    "fedau": FedAU,
    "average_participating": AverageParticipating,
    "average_all": AverageAll,
    "known_probability": KnownProbability,
    "mifa": Mifa,
    "fedvarp": FedVarp,
    "fedce": FedCE,
}

__all__ = ["STRATEGIES"]
