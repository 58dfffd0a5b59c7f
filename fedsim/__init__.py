"""fedsim: a deterministic federated-learning simulator with a virtual clock."""

__version__ = "0.1.0"
