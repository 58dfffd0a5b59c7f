"""The strategy table: registry name -> `"module:Class"`. One file per algorithm.

Entries are imported on first use (`fedsim.registry.load("strategy", name)`), so reading
the table imports no strategy. Nothing else lives here.
"""

STRATEGIES: dict[str, str] = {
    # synchronous
    "fedavg": "strategies.fedavg:FedAvg",
    "fedprox": "strategies.fedprox:FedProx",
    "scaffold": "strategies.scaffold:Scaffold",
    "fedspeed": "strategies.fedspeed:FedSpeed",
    "admm": "strategies.admm:Admm",
    "admm_standard": "strategies.admm_standard:AdmmStandard",
    "fedau": "strategies.fedau:FedAU",
    "average_participating": "strategies.average_participating:AverageParticipating",
    "average_all": "strategies.average_all:AverageAll",
    "known_probability": "strategies.known_probability:KnownProbability",
    "mifa": "strategies.mifa:Mifa",
    "fedvarp": "strategies.fedvarp:FedVarp",
    "fedce": "strategies.fedce:FedCE",
    "fedadam": "strategies.fedopt:FedAdam",
    "fedyogi": "strategies.fedopt:FedYogi",
    "fedadagrad": "strategies.fedopt:FedAdagrad",
    # asynchronous
    "fedbuff": "strategies.fedbuff:FedBuff",
    "fedfix": "strategies.fedfix:FedFix",
    "async_fedavg": "strategies.async_fedavg:AsyncFedAvg",
}

__all__ = ["STRATEGIES"]
