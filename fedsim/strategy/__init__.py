"""What strategies build on: the contracts they satisfy and the maths they share.

Strategy files (`strategies/*.py`) import from here only: `contracts` declares the
SyncStrategy / AsyncStrategy / TimedStrategy / ClientRule / ChecksClients protocols and `check_strategy`;
`maths` holds weighted sums, staleness discounts, proximal solves and the like.
"""

from fedsim.strategy.contracts import (
    AsyncStrategy,
    ChecksClients,
    ClientRule,
    Strategy,
    SyncStrategy,
    TimedStrategy,
    check_strategy,
    modes,
    strategy_problems,
    supports_async,
    supports_sync,
)
from fedsim.strategy.maths import (
    apply_delta,
    averaged_delta,
    consensus_average,
    example_weights,
    least_squares_moments,
    participant_mask,
    prox_solve,
    replace_rows,
    sorted_updates,
    staleness_weight,
    weighted_sum,
)

__all__ = [
    "AsyncStrategy",
    "ChecksClients",
    "ClientRule",
    "Strategy",
    "SyncStrategy",
    "TimedStrategy",
    "apply_delta",
    "averaged_delta",
    "check_strategy",
    "consensus_average",
    "example_weights",
    "least_squares_moments",
    "modes",
    "participant_mask",
    "prox_solve",
    "replace_rows",
    "sorted_updates",
    "staleness_weight",
    "strategy_problems",
    "supports_async",
    "supports_sync",
    "weighted_sum",
]
