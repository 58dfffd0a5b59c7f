"""Every random stream is derived from the root seed, a stream name and stable ids
(client id, dispatch index, round) — never from wall-clock or arrival order."""

from __future__ import annotations

import numpy as np

# Stream ids are part of the reproducibility contract: never renumber, only append.
STREAMS: dict[str, int] = {
    "dataset": 1, "partition": 2, "local_split": 3, "participation": 4, "system": 5,
    "channel_down": 6, "channel_up": 7, "job": 8, "model_init": 9, "sampling": 10,
    "faults": 11, "system_job": 12, "probs": 13, "strategy": 14,
    "hard_clients": 15, "byzantine": 16, "eval_sample": 17,
}


def seed_of(root: int, stream: str, *ids: int) -> int:
    """A 63-bit seed for (root, stream, ids...)."""
    words = np.random.SeedSequence([int(root), STREAMS[stream], *map(int, ids)]).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


def rng(root: int, stream: str, *ids: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(root), STREAMS[stream], *map(int, ids)]))
