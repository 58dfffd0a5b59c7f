"""The communication channel: additive Gaussian noise on downlink and uplink and packet
loss (specs §2.3). Noise is drawn per receiving client per transmission, from streams
keyed by (client, dispatch), so it does not depend on execution order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim import seeding
from fedsim.config import bounded


@dataclass(frozen=True, kw_only=True)
class ChannelConfig:
    """Args:
    downlink_noise_std: σ_d; client k receives z + N(0, σ_d² I).
    uplink_noise_std: σ_u; the server receives the client's message + N(0, σ_u² I).
    loss_prob: probability that an uplink message is lost.
    """

    downlink_noise_std: float = bounded(0.0, ge=0.0, le=1e6)
    uplink_noise_std: float = bounded(0.0, ge=0.0, le=1e6)
    loss_prob: float = bounded(0.0, ge=0.0, le=1.0)

    @property
    def noisy(self) -> bool:
        return self.downlink_noise_std > 0 or self.uplink_noise_std > 0


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
