"""Named random streams derived from the root seed and stable ids, never from arrival order.

Every stream is keyed by the root seed, a stream name and stable ids (client id, dispatch
index, round) — never by wall-clock time or arrival order — so runs reproduce on any executor.
"""

from __future__ import annotations

import numpy as np

# Stream ids are part of the reproducibility contract: never renumber, only append.
STREAMS: dict[str, int] = {
    "dataset": 1, "partition": 2, "local_split": 3, "participation": 4, "system": 5,
    "channel_down": 6, "channel_up": 7, "job": 8, "model_init": 9, "sampling": 10,
    "faults": 11, "system_job": 12, "probs": 13, "strategy": 14,
    "hard_clients": 15, "byzantine": 16, "eval_sample": 17,
    "compression": 18,  # fedsim.pipeline.compression (random-k index sets, QSGD rounding)
    "dp_central": 19, "dp_bits": 21, "dp_local": 22,  # fedsim.pipeline.dp
    "secagg": 20,  # fedsim.pipeline.secagg
    "optuna": 30,  # fedsim sweep --optuna: the sampler of each trial
}


def seed_of(root: int, stream: str, *ids: int) -> int:
    """A 63-bit integer seed for (root, stream, ids...), for APIs that take an int seed.

    Args:
        root: the run's root seed.
        stream: a name from `STREAMS`.
        *ids: stable integer ids (client, dispatch, round, ...).

    Returns:
        An int in [0, 2**63).
    """
    words = np.random.SeedSequence([int(root), STREAMS[stream], *map(int, ids)]).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


def rng(root: int, stream: str, *ids: int) -> np.random.Generator:
    """A numpy generator for the stream (root, stream, ids...).

    Args:
        root: the run's root seed.
        stream: a name from `STREAMS`.
        *ids: stable integer ids (client, dispatch, round, ...).

    Returns:
        A fresh generator; equal keys give identical streams.
    """
    return np.random.default_rng(np.random.SeedSequence([int(root), STREAMS[stream], *map(int, ids)]))
