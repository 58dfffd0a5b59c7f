"""The communication channel: additive Gaussian noise on downlink and uplink and packet
loss (specs §2.3). Noise is drawn per receiving client per transmission, from streams
keyed by (client, dispatch), so it does not depend on execution order."""

from __future__ import annotations

import numpy as np

from fedsim import seeding
from fedsim.scenario.schema import ChannelConfig


def downlink(cfg: ChannelConfig, params: np.ndarray, root: int, client: int, dispatch: int) -> np.ndarray:
    if cfg.downlink_noise_std == 0:
        return params
    noise = seeding.rng(root, "channel_down", client, dispatch).normal(0.0, cfg.downlink_noise_std, params.shape)
    return (params + noise).astype(np.float32)


def uplink(cfg: ChannelConfig, vector: np.ndarray, root: int, client: int, dispatch: int) -> np.ndarray:
    if cfg.uplink_noise_std == 0:
        return vector
    noise = seeding.rng(root, "channel_up", client, dispatch).normal(0.0, cfg.uplink_noise_std, vector.shape)
    return (vector + noise).astype(np.float32)


def lost(cfg: ChannelConfig, root: int, client: int, dispatch: int) -> bool:
    if cfg.loss_prob == 0:
        return False
    return bool(seeding.rng(root, "channel_up", client, dispatch, 1).random() < cfg.loss_prob)
