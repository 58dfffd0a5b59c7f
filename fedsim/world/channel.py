"""The communication channel: additive Gaussian noise on downlink and uplink, and packet loss.

Noise is zero-mean white Gaussian, drawn independently per receiving client per transmission
(the same broadcast reaches different clients with different noise), from streams keyed by
(client, dispatch), so it does not depend on execution order.

References:
    E. Lari, R. Arablouei, V. C. Gogineni and S. Werner, "Noise-Robust and Resource-Efficient
    ADMM-based Federated Learning", arXiv:2409.13451 (2024) — the noisy downlink
    z̃_k = z + ε_k and uplink w̃_k = w_k + ζ_k of its system model (abstract); the paper's exact
    variances are not reproduced here, they are scenario settings.
"""

from __future__ import annotations

import numpy as np

from fedsim import seeding
from fedsim.scenario.schema import ChannelConfig


def downlink(cfg: ChannelConfig, params: np.ndarray, root: int, client: int, dispatch: int) -> np.ndarray:
    """The global model as one client receives it: params + N(0, σ_d² I).

    Args:
        cfg: the scenario's `channel:` block (σ_d is `downlink_noise_std`).
        params: the flat model sent by the server.
        root: the run's root seed.
        client: the receiving client.
        dispatch: the client's dispatch index; with `client` it keys the noise stream.

    Returns:
        `params` itself when σ_d = 0 (no copy), else a noisy float32 copy.
    """
    if cfg.downlink_noise_std == 0:
        return params
    noise = seeding.rng(root, "channel_down", client, dispatch).normal(0.0, cfg.downlink_noise_std, params.shape)
    return (params + noise).astype(np.float32)


def uplink(cfg: ChannelConfig, vector: np.ndarray, root: int, client: int, dispatch: int) -> np.ndarray:
    """A client's message as the server receives it: vector + N(0, σ_u² I).

    Args:
        cfg: the scenario's `channel:` block (σ_u is `uplink_noise_std`).
        vector: the flat vector the client sends (its update).
        root: the run's root seed.
        client: the sending client.
        dispatch: the client's dispatch index; with `client` it keys the noise stream.

    Returns:
        `vector` itself when σ_u = 0, else a noisy float32 copy.
    """
    if cfg.uplink_noise_std == 0:
        return vector
    noise = seeding.rng(root, "channel_up", client, dispatch).normal(0.0, cfg.uplink_noise_std, vector.shape)
    return (vector + noise).astype(np.float32)


def lost(cfg: ChannelConfig, root: int, client: int, dispatch: int) -> bool:
    """Whether this job's upload is lost in transit (probability `loss_prob`).

    Args:
        cfg: the scenario's `channel:` block.
        root: the run's root seed.
        client: the sending client.
        dispatch: the client's dispatch index.

    Returns:
        True if the server never receives the update.
    """
    if cfg.loss_prob == 0:
        return False
    return bool(seeding.rng(root, "channel_up", client, dispatch, 1).random() < cfg.loss_prob)
