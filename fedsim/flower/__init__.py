"""Flower hosting: ServerApp, ClientApp and deployment helpers (the only place fedsim imports flwr)."""
