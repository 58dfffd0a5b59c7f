"""Privacy accounting for the DP stage: which sampling the participation process gives, and dp-accounting.

No accountant is written here: every ε comes from Google's `dp_accounting` library (its RDP
accountant, Mironov, "Rényi Differential Privacy", CSF 2017, with the subsampled-Gaussian
bounds of Mironov, Talwar & Zhang 2019 and Wang, Balle & Kasiviswanathan, AISTATS 2019; or its
PLD accountant, Doroshenko et al., PETS 2022). This module only decides *which* DP event one
mechanism invocation is, from what the scenario says about participation:

* `full` participation: every client in every round, q = 1 (no amplification);
* `uniform` (k of N without replacement): `SampledWithoutReplacementDpEvent(N, k, ·)`, whose
  bound (Wang et al. 2019, Thm. 27) holds for the replace-one neighbouring relation, under
  which the clipped sum has L2 sensitivity 2C: the Gaussian's multiplier is z/2;
* `bernoulli` with one constant probability p (or an explicit list, q = max p_n): Poisson
  sampling, `PoissonSampledDpEvent(q, ·)`, add-or-remove relation (sensitivity C);
* every other process (markov, cyclic, trace, bernoulli with drawn probabilities, out-of-tree
  plugins) is not a sampling process with a known rate: accounted as full participation.

dp-accounting is an optional dependency (`pip install 'fedsim[privacy]'`), imported on first use.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Literal

from fedsim import registry

INSTALL_HINT = "the dp: block needs dp-accounting: pip install 'fedsim[privacy]'"


def library() -> Any:
    """The `dp_accounting` module.

    Returns:
        The imported module.

    Raises:
        ImportError: one line saying how to install it.
    """
    try:
        import dp_accounting
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return dp_accounting


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Mute dp-accounting's absl WARNINGs while it runs.

    The RDP accountant logs each low order it drops as numerically unstable; the bound stays
    valid over the remaining orders, so that chatter would only flood the run's output.
    """
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@dataclass(frozen=True)
class Sampling:
    """What the participation process means for privacy amplification.

    Attributes:
        kind: `poisson`, `without_replacement`, `full` or `none` (no sampling process:
            accounted as full participation).
        q: the per-round sampling probability (1 for `full` and `none`).
        population: N, the number of clients.
        sample_size: k for `without_replacement`, else None.
        expected_cohort: the fixed denominator m̄ = qN of central DP (McMahan et al. 2018's
            fixed-denominator estimator), or None when the process has no known rate (the
            server then divides by the number of updates that arrived).
        note: one line for the log and summary.json.
    """

    kind: Literal["poisson", "without_replacement", "full", "none"]
    q: float
    population: int
    sample_size: int | None
    expected_cohort: float | None
    note: str


def sampling_of(participation: Any, num_clients: int) -> Sampling:
    """The sampling assumption that matches a participation plugin (read, never run).

    Args:
        participation: the scenario's `participation:` block.
        num_clients: N.

    Returns:
        The `Sampling` the accountant uses.
    """
    name = registry.name_of("participation", participation)
    n = int(num_clients)
    if name == "full":
        return Sampling("full", 1.0, n, None, float(n), "full: every client takes part in every round (q = 1)")
    if name == "uniform":
        k = int(participation.k)
        return Sampling("without_replacement", k / n, n, k, float(k),
                        f"without_replacement: {k} of {n} clients per round (q = {k / n:g}), "
                        "replace-one adjacency (sensitivity 2C)")
    if name == "bernoulli":
        probs = participation.probs
        q = None
        if isinstance(probs, tuple):
            q, mean = max(probs), sum(probs)
        elif registry.name_of("probs", probs) == "constant":
            q, mean = float(probs.p), float(probs.p) * n
        if q is not None:
            return Sampling("poisson", float(q), n, None, float(mean),
                            f"poisson: each client independently with probability q = {q:g} per round")
        return Sampling("none", 1.0, n, None, None,
                        "none: bernoulli participation with drawn per-client probabilities has no known rate; "
                        "accounted as full participation")
    return Sampling("none", 1.0, n, None, None,
                    f"none: {name} participation is not a sampling process; accounted as full participation")


def cohort_event(sampling: Sampling, z: float) -> Any:
    """The DP event of one noisy cohort sum (central DP, one sync round).

    Args:
        sampling: the participation's sampling assumption.
        z: the noise multiplier (noise std / C on the clipped sum).

    Returns:
        A `dp_accounting.DpEvent`.
    """
    dp = library()
    if sampling.kind == "poisson":
        return dp.PoissonSampledDpEvent(sampling.q, dp.GaussianDpEvent(z))
    if sampling.kind == "without_replacement":  # replace-one: the clipped sum moves by up to 2C
        return dp.SampledWithoutReplacementDpEvent(sampling.population, sampling.sample_size,
                                                   dp.GaussianDpEvent(z / 2))
    return dp.GaussianDpEvent(z)


def single_event(z: float) -> Any:
    """The DP event of releasing one client's noisy update (local DP, or async central DP).

    Any two updates in the C-ball differ by up to 2C (replace-one), so the multiplier is z/2.

    Args:
        z: the noise multiplier (noise std / C on the clipped update).

    Returns:
        A `dp_accounting.GaussianDpEvent`.
    """
    return library().GaussianDpEvent(z / 2)


class Accountant:
    """One event composed `count` times in a dp-accounting accountant, ε(δ) on demand.

    Args:
        kind: `rdp` or `pld`.
        event: the event of one mechanism invocation.
        delta: δ of the reported (ε, δ).
        replace_one: use the replace-one neighbouring relation (sampling without replacement).
    """

    def __init__(self, kind: str, event: Any, delta: float, replace_one: bool = False):
        dp = library()
        relation = dp.NeighboringRelation.REPLACE_ONE if replace_one else dp.NeighboringRelation.ADD_OR_REMOVE_ONE
        if kind == "rdp":
            self.acc = dp.rdp.RdpAccountant(neighboring_relation=relation)
        else:
            self.acc = dp.pld.PLDAccountant(neighboring_relation=relation)
        self.kind, self.event, self.delta = kind, event, float(delta)
        self.count = 0

    def compose_to(self, count: int) -> None:
        """Compose the event until it has been applied `count` times.

        Args:
            count: the number of mechanism invocations so far.
        """
        if count > self.count:
            with _quiet():
                self.acc.compose(self.event, count - self.count)
            self.count = count

    def epsilon(self) -> float:
        """ε at `delta` for the invocations composed so far (0 before the first; inf for z = 0).

        Returns:
            ε.
        """
        if self.count == 0:
            return 0.0
        with _quiet():
            return float(self.acc.get_epsilon(self.delta))
