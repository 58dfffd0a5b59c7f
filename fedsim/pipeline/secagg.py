"""Secure aggregation, simulated: the server sees only the sum of a sync cohort.

The stage runs the arithmetic of the protocol of Bonawitz et al. ("Practical Secure
Aggregation for Privacy-Preserving Machine Learning", CCS 2017; semi-honest version: rounds
0 AdvertiseKeys, 1 ShareKeys, 2 MaskedInputCollection, 4 Unmasking; round 3 ConsistencyCheck
belongs to the malicious version and is not run) over the complete graph (`secagg`), or over a random k-regular
Harary graph of neighbours (`secagg_plus`, Bell, Bonawitz, Gascón, Lepoint, Raykova,
"Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020: the k-regular
neighbour graph replacing the complete one).

Per round r, with U1 the clients dispatched in the round (all advertise keys and share
them), U3 ⊆ U1 those whose update was accepted (every other job dropped out before the
masked-input step: dropout, deadline, crash, loss, failed validation), client u:

* weight w_u = n_u (the strategy's `weighting: examples`) or 1 (`uniform`), capped at
  `max_weight`; encodes x_u = [w_u, w_u·q_u] in Z_{2^b}, q_u = SR(s·clip(Δ_u, ±r)), with SR
  stochastic rounding (floor(v + U[0,1)), unbiased, error < 1/s per coordinate) and the
  public scale s = (2^{b−1} − 1 − M) / (M·r), M = |U1|·max weight, so no sum can overflow;
* keys: a toy Diffie-Hellman pair (sk_u, pk_u = g^{sk_u} mod p, p = 2^127 − 1); the pair seed
  s_uv = pk_v^{sk_u} mod p = s_vu; a self-mask seed b_u. b_u and sk_u are Shamir-shared
  t-out-of-|N̄(u)| over GF(p) among N̄(u) = the neighbours of u and u itself;
* masked input y_u = x_u + PRG(b_u) + Σ_{v∈N(u)} σ_uv PRG(s_uv) mod 2^b, σ_uv = +1 if u < v, −1 if u > v.

The server sums y_u over U3, reconstructs (Lagrange, from survivors' shares) b_u of every
survivor and sk_v of every dropped client with a surviving neighbour, recomputes s_uv from
sk_v and pk_u, and removes PRG(b_u) and the unmatched pair masks σ_uv PRG(s_uv). If a
secret it needs has fewer than t surviving share holders, the round fails as in the protocol
(no update, a `warning` event, the model unchanged). The strategy then gets ONE pooled update,
Δ̄ = Σ w_u q_u / (s Σ w_u), with num_examples = Σ w_u; a strategy that declares `secure_sum`
(fedsim.strategy.contracts) gives the same model as with the per-client cohort, up to the
fixed-point error ≤ 1/s per coordinate (with no coordinate clipped).

The toy group and the seeded PRG make the arithmetic exact and reproducible; they are NOT
secure cryptography. Every secret comes from `fedsim.seeding` streams keyed by
(root, "secagg", round, purpose, client[, ...]).

Cost model (extra messages, priced on the virtual clock, `round_cost`): each extra round trip
is 2·latency + (bytes up + bytes down)·8/bandwidth of the busiest client (clients talk in
parallel), with k_u = |N(u)|, K = 32-byte public keys, S = 36-byte Shamir shares (a 32-byte
field element and a 4-byte index), C = 2S + 8 + 28 bytes per encrypted share pair (two
shares, two 4-byte ids, AES-GCM nonce and tag):
  AdvertiseKeys   up 2K,                      down k_u·(2K + 4)   (neighbours' keys and ids)
  ShareKeys       up k_u·C,                   down k_u·C          (the server forwards them)
  MaskedInput     (d + 1)·b/8 instead of 4d   (no extra latency: it replaces the float upload)
  Unmasking       up (k_u + 1)·S,             down 4·|U1|         (survivor / dropout lists)
This follows the per-client accounting of the performance analysis of Bonawitz et al. 2017
(client communication O(n + m): public keys, shares, the masked vector) and Bell et al. 2020 (n replaced by the
neighbourhood size k = O(log n)); the message sizes are fedsim's constants. An aborted
round has no Unmasking round trip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from fedsim import seeding
from fedsim.errors import ConfigError
from fedsim.scenario.fields import bounded
from fedsim.types import ClientUpdate

P = 2**127 - 1  # a Mersenne prime: the Shamir field GF(p) and the toy Diffie-Hellman group
G = 3
PUBLIC_KEY_BYTES = 32
SHARE_BYTES = 36
CIPHERTEXT_BYTES = 2 * SHARE_BYTES + 8 + 28
ID_BYTES = 4
# purposes inside the "secagg" stream (stable: part of the reproducibility contract)
_SELF, _KEY, _ROUNDING, _GRAPH, _SHARES = 0, 1, 2, 3, 4


# -- configuration blocks -----------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class NoSecAgg:
    """No secure aggregation (default): the strategy sees every accepted update."""

    active: ClassVar[bool] = False


@dataclass(frozen=True, kw_only=True)
class SecAgg:
    """SecAgg (Bonawitz et al., CCS 2017): pairwise masks over the complete graph of the cohort.

    Args:
        threshold: t, the Shamir threshold: a value ≤ 1 is a fraction of each secret's share
            holders (t = max(2, ⌈f·holders⌉)); a value > 1 is a count (an integer).
        bits: b, the field Z_{2^b} of the masked vectors (the masked upload is (d+1)·b/8 bytes).
        clip_range: r, each coordinate of an update is clipped to [−r, r] by its client.
        max_weight: largest client weight (examples); bounds the sum, so the fixed-point scale
            is s = (2^{b−1} − 1 − M)/(M·r) with M = cohort size · max_weight. Larger weights are capped.
    """

    active: ClassVar[bool] = True
    complete: ClassVar[bool] = True

    threshold: float = bounded(0.5, gt=0.0, le=1e9)
    bits: int = bounded(32, ge=16, le=64)
    clip_range: float = bounded(4.0, gt=0.0, le=1e9)
    max_weight: int = bounded(1000, ge=1, le=1_000_000_000)

    def validate(self) -> None:
        """Refuse a threshold count that is not a whole number.

        Raises:
            ConfigError: naming `threshold`.
        """
        if self.threshold > 1 and not float(self.threshold).is_integer():
            raise ConfigError("threshold", f"a value above 1 is a count of shares and must be whole, "
                              f"got {self.threshold}")

    def degree(self, m: int) -> int:
        """k, the number of neighbours of each of m clients (complete graph: m − 1).

        Args:
            m: |U1|.

        Returns:
            The neighbourhood size.
        """
        return m - 1


@dataclass(frozen=True, kw_only=True)
class SecAggPlus(SecAgg):
    """SecAgg+ (Bell et al., CCS 2020): pairwise masks and shares only along a random k-regular graph.

    Args:
        threshold: t, as for `secagg`, of each secret's k + 1 share holders (its neighbours and itself).
        bits: b, the field Z_{2^b} of the masked vectors.
        clip_range: r, each coordinate of an update is clipped to [−r, r] by its client.
        max_weight: largest client weight (examples), as for `secagg`.
        neighbours: k, neighbours per client (even; an odd k is rounded up). Unset: 2·⌈log2 m⌉
            for a cohort of m (Bell et al. need k = O(log m); the constant 2 is fedsim's). At
            least m − 1 = the complete graph, i.e. SecAgg.
    """

    complete: ClassVar[bool] = False

    neighbours: int | None = bounded(None, ge=2, le=1_000_000)

    def degree(self, m: int) -> int:
        """k, the number of neighbours of each of m clients in the Harary graph H(k, m).

        Args:
            m: |U1|.

        Returns:
            The neighbourhood size (m − 1 when k ≥ m − 1).
        """
        k = self.neighbours if self.neighbours is not None else 2 * math.ceil(math.log2(max(m, 2)))
        k += k % 2
        return min(k, m - 1)


# -- arithmetic ---------------------------------------------------------------------------

def _big(rng: np.random.Generator, below: int) -> int:
    """A uniform-enough integer in [1, below) from two 64-bit words (below ≈ 2^127)."""
    hi, lo = (int(x) for x in rng.integers(0, 2**64, size=2, dtype=np.uint64))
    return ((hi << 64) | lo) % (below - 1) + 1


def shamir_split(secret: int, xs: Sequence[int], t: int, rng: np.random.Generator) -> dict[int, int]:
    """Shamir t-out-of-n shares of `secret` over GF(p) at the points xs (Shamir, CACM 1979).

    Args:
        secret: the secret, 0 ≤ secret < p.
        xs: the holders' evaluation points (distinct, non-zero).
        t: threshold: any t shares reconstruct, fewer reveal nothing.
        rng: draws the t − 1 random coefficients.

    Returns:
        {x: f(x)} for f of degree t − 1 with f(0) = secret.
    """
    coeffs = [secret] + [_big(rng, P) for _ in range(t - 1)]
    out = {}
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % P
        out[x] = y
    return out


def shamir_combine(shares: dict[int, int]) -> int:
    """The secret f(0) from shares {x: f(x)} by Lagrange interpolation over GF(p).

    Args:
        shares: at least t shares.

    Returns:
        The secret.
    """
    total = 0
    for xi, yi in shares.items():
        num, den = 1, 1
        for xj in shares:
            if xj != xi:
                num = num * (-xj) % P
                den = den * (xi - xj) % P
        total = (total + yi * num * pow(den, -1, P)) % P
    return total


def prg(seed: int, size: int, bits: int) -> np.ndarray:
    """PRG(seed): `size` uniform elements of Z_{2^bits} as uint64.

    Args:
        seed: a non-negative integer seed (pair seed s_uv or self-mask seed b_u).
        size: d + 1.
        bits: b.

    Returns:
        uint64 array of values in [0, 2^b).
    """
    return np.random.default_rng(np.random.SeedSequence(seed)).integers(0, 2**bits, size=size, dtype=np.uint64)


def _mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def scale(cfg: SecAgg, m: int, max_weight: int) -> float:
    """The public fixed-point scale s = (2^{b−1} − 1 − M) / (M·r), M = m · max_weight.

    With |q| ≤ s·r + 1 and Σ w ≤ M, |Σ w q| ≤ 2^{b−1} − 1: the sum never wraps.

    Args:
        cfg: the block.
        m: |U1|.
        max_weight: the largest weight a client may have (1 for uniform weights).

    Returns:
        s.

    Raises:
        ValueError: when b is too small for the cohort (s < 1).
    """
    big = m * max_weight
    s = ((1 << (cfg.bits - 1)) - 1 - big) / (big * cfg.clip_range)
    if s < 1:
        raise ValueError(f"secagg.bits {cfg.bits} is too small for {m} clients of weight up to {max_weight} "
                         f"with clip_range {cfg.clip_range} (scale {s:.3g} < 1)")
    return s


def encode(delta: np.ndarray, weight: int, s: float, cfg: SecAgg, rng: np.random.Generator) -> np.ndarray:
    """x_u = [w, w·q] in Z_{2^b}, q = floor(s·clip(Δ, ±r) + U[0,1)) (stochastic rounding).

    Args:
        delta: Δ_u (d,).
        weight: w_u.
        s: the scale.
        cfg: the block (bits, clip_range).
        rng: the rounding stream of (round, client).

    Returns:
        uint64 (d + 1,) in [0, 2^b).
    """
    v = np.clip(np.asarray(delta, dtype=np.float64), -cfg.clip_range, cfg.clip_range) * s
    q = np.floor(v + rng.random(v.shape)).astype(np.int64)
    x = np.concatenate([[np.int64(weight)], np.int64(weight) * q]).astype(np.uint64)  # two's complement wrap
    return x & _mask(cfg.bits)


def decode(total: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers from a sum in Z_{2^b} (two's complement).

    Args:
        total: uint64 values in [0, 2^b).
        bits: b.

    Returns:
        int64 array.
    """
    if bits == 64:
        return total.view(np.int64)
    signed = total.astype(np.int64)
    return np.where(signed >= (1 << (bits - 1)), signed - (1 << bits), signed)


def harary(clients: Sequence[int], k: int, rng: np.random.Generator) -> dict[int, frozenset[int]]:
    """The random Harary graph H(k, m): a random ring order, each client linked to k/2 on each side.

    Args:
        clients: U1 (m ids).
        k: even degree (m − 1 = complete graph).
        rng: the graph stream of the round.

    Returns:
        client -> its neighbours (k of them; all others when k ≥ m − 1).
    """
    m = len(clients)
    if k >= m - 1:
        return {c: frozenset(x for x in clients if x != c) for c in clients}
    order = [clients[i] for i in rng.permutation(m)]
    return {c: frozenset(order[(i + o) % m] for o in range(-(k // 2), k // 2 + 1) if o != 0)
            for i, c in enumerate(order)}


@dataclass(frozen=True)
class Keys:
    """One round's key material, as the clients generated and shared it.

    Attributes:
        neighbours: u -> N(u).
        sk: u -> secret key; pk: u -> public key g^sk mod p.
        b: u -> self-mask seed.
        shares: u -> {"b": {holder x: share}, "sk": {...}} (x = holder id + 1).
        t: u -> the threshold of u's secrets.
    """

    neighbours: dict[int, frozenset[int]]
    sk: dict[int, int]
    pk: dict[int, int]
    b: dict[int, int]
    shares: dict[int, dict[str, dict[int, int]]]
    t: dict[int, int]


def threshold(cfg: SecAgg, holders: int) -> int:
    """The threshold t of a secret with this many share holders.

    Args:
        cfg: the block.
        holders: |N̄(u)| = k_u + 1.

    Returns:
        max(2, ⌈f·holders⌉) for a fraction f ≤ 1, else the count itself.
    """
    if cfg.threshold <= 1:
        return max(2, math.ceil(cfg.threshold * holders - 1e-9))
    return int(cfg.threshold)


def setup_keys(cfg: SecAgg, root: int, r: int, clients: Sequence[int]) -> Keys:
    """AdvertiseKeys and ShareKeys for U1 = `clients` in round r.

    Args:
        cfg: the block.
        root: the root seed.
        r: the round.
        clients: U1, sorted.

    Returns:
        The round's keys and shares.
    """
    nb = harary(list(clients), cfg.degree(len(clients)), seeding.rng(root, "secagg", r, _GRAPH))
    sk, pk, b, shares, t = {}, {}, {}, {}, {}
    for u in clients:
        g = seeding.rng(root, "secagg", r, _KEY, u)
        sk[u], b[u] = _big(g, P), _big(g, 2**126)
        pk[u] = pow(G, sk[u], P)
        holders = sorted(nb[u] | {u})
        t[u] = threshold(cfg, len(holders))
        sg = seeding.rng(root, "secagg", r, _SHARES, u)
        xs = [h + 1 for h in holders]
        shares[u] = {"b": shamir_split(b[u], xs, t[u], sg), "sk": shamir_split(sk[u], xs, t[u], sg)}
    return Keys(nb, sk, pk, b, shares, t)


def masked_input(keys: Keys, u: int, x: np.ndarray, bits: int) -> np.ndarray:
    """y_u = x_u + PRG(b_u) + Σ_{v∈N(u)} σ_uv PRG(s_uv) mod 2^b (σ = + for u < v, − for u > v).

    Args:
        keys: the round's keys (u uses only its own secrets and its neighbours' public keys).
        u: the client.
        x: its encoded input.
        bits: b.

    Returns:
        The masked vector, uint64 in [0, 2^b).
    """
    y = x + prg(keys.b[u], x.size, bits)
    for v in sorted(keys.neighbours[u]):
        p = prg(pow(keys.pk[v], keys.sk[u], P), x.size, bits)  # s_uv = pk_v^{sk_u}
        y = y + p if u < v else y - p
    return y & _mask(bits)


def unmask(keys: Keys, masked: dict[int, np.ndarray], bits: int) -> tuple[np.ndarray | None, str | None]:
    """The server's side: sum the masked inputs of U3 and remove the masks it can reconstruct.

    Args:
        keys: the round's keys; the server reads only public keys, the graph and the shares
            held by survivors (never sk or b directly).
        masked: U3 -> y_u.
        bits: b.

    Returns:
        (Σ_{u∈U3} x_u mod 2^b, None), or (None, reason) when a needed secret has fewer than
        t surviving share holders (the protocol aborts).
    """
    alive = set(masked)
    total = None
    for u in sorted(alive):
        total = masked[u] if total is None else total + masked[u]
    assert total is not None
    needed = [(u, "b") for u in sorted(alive)]
    needed += [(v, "sk") for v in sorted(set(keys.neighbours) - alive) if keys.neighbours[v] & alive]
    secrets = {}
    for u, kind in needed:
        held = {x: y for x, y in keys.shares[u][kind].items() if x - 1 in alive}
        if len(held) < keys.t[u]:
            what = "self-mask seed" if kind == "b" else "key of dropped client"
            return None, (f"{what} {u} has {len(held)} surviving share holders, fewer than the threshold "
                          f"t = {keys.t[u]}")
        secrets[(u, kind)] = shamir_combine(dict(sorted(held.items())[:keys.t[u]]))
    for u in sorted(alive):
        total = total - prg(secrets[(u, "b")], total.size, bits)
    for (v, kind), skv in secrets.items():
        if kind != "sk":
            continue
        for u in sorted(keys.neighbours[v] & alive):  # u added σ_uv PRG(s_uv); s_uv = pk_u^{sk_v}
            p = prg(pow(keys.pk[u], skv, P), total.size, bits)
            total = total - p if u < v else total + p
    return total & _mask(bits), None


# -- the stage ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RoundResult:
    """What one secure-aggregation round gives the engine.

    Attributes:
        cohort: [the pooled update] (empty when the round failed or nobody survived).
        seconds: virtual seconds the extra protocol rounds add to the round.
        bytes_up: extra uplink bytes (keys, shares, masked-vector size − float32 size).
        bytes_down: extra downlink bytes (forwarded keys and shares, survivor lists).
        failure: the one-line reason when the protocol aborted, else None.
    """

    cohort: list[ClientUpdate]
    seconds: float
    bytes_up: int
    bytes_down: int
    failure: str | None


def round_cost(cfg: SecAgg, system, d: int, degrees: dict[int, int], survivors: Sequence[int],
               unmasked: bool) -> tuple[float, int, int]:
    """Virtual seconds and bytes of the protocol's extra messages (module docstring, "Cost model").

    Args:
        cfg: the block.
        system: the scenario's SystemConfig (latency, bandwidth_mbps).
        d: the model size.
        degrees: u -> k_u over U1.
        survivors: U3.
        unmasked: whether the Unmasking round ran (False when the round aborted first).

    Returns:
        (seconds, bytes up, bytes down).
    """
    bw = system.bandwidth_mbps

    def trip(nbytes: int) -> float:
        return 2 * system.latency + (nbytes * 8 / (bw * 1e6) if bw else 0.0)

    def wire(nbytes: int) -> float:
        return nbytes * 8 / (bw * 1e6) if bw else 0.0

    m, kmax = len(degrees), max(degrees.values())
    ak_up, ak_down = {u: 2 * PUBLIC_KEY_BYTES for u in degrees}, \
        {u: k * (2 * PUBLIC_KEY_BYTES + ID_BYTES) for u, k in degrees.items()}
    sk_io = {u: k * CIPHERTEXT_BYTES for u, k in degrees.items()}
    extra = ((d + 1) * cfg.bits + 7) // 8 - 4 * d  # masked vector instead of the float32 one
    seconds = trip(2 * PUBLIC_KEY_BYTES + kmax * (2 * PUBLIC_KEY_BYTES + ID_BYTES)) \
        + trip(2 * kmax * CIPHERTEXT_BYTES) + (wire(extra) if survivors else 0.0)
    up = sum(ak_up.values()) + sum(sk_io.values()) + extra * len(survivors)
    down = sum(ak_down.values()) + sum(sk_io.values())
    if unmasked and survivors:
        seconds += trip(max((degrees[u] + 1) * SHARE_BYTES for u in survivors) + ID_BYTES * m)
        up += sum((degrees[u] + 1) * SHARE_BYTES for u in survivors)
        down += ID_BYTES * m * len(survivors)
    return seconds, up, down


class SecAggStage:
    """The engine-owned secure-aggregation stage of a sync run.

    Args:
        cfg: the `secagg:` block (SecAgg or SecAggPlus).
        root: the root seed.
        weighting: the strategy's `weighting` (`examples`: w = n_u; `uniform`: w = 1).
        system: the scenario's SystemConfig (prices the extra rounds).
    """

    def __init__(self, cfg: SecAgg, root: int, weighting: str, system):
        self.cfg, self.root, self.system = cfg, root, system
        self.weighting = weighting

    def weight(self, update: ClientUpdate) -> int:
        """w_u: n_u for `examples` weighting (capped at max_weight), 1 for `uniform`.

        Args:
            update: the client's update.

        Returns:
            Its integer weight.
        """
        if self.weighting != "examples":
            return 1
        return int(min(update.num_examples, self.cfg.max_weight))  # capped: the sum must not wrap

    def round(self, r: int, dispatched: Sequence[int], updates: Sequence[ClientUpdate], d: int,
              version: int) -> RoundResult:
        """Run one round of the protocol over U1 = `dispatched`, U3 = the clients of `updates`.

        Args:
            r: the round.
            dispatched: every client dispatched in the round (U1).
            updates: the accepted updates (U3's inputs), any order.
            d: the model size.
            version: the server version (the pooled update's base version).

        Returns:
            The pooled cohort, the extra time and bytes, and the failure reason if it aborted.
        """
        clients = sorted(int(c) for c in dispatched)
        keys = setup_keys(self.cfg, self.root, r, clients)
        degrees = {u: len(keys.neighbours[u]) for u in clients}
        survivors = sorted(u.client for u in updates)
        failure = None
        if len(clients) < 2:
            failure = "a cohort of one client cannot be summed securely (the sum would be its update)"
        elif survivors and len(survivors) < 2:
            failure = "only one client sent its masked input; unmasking would reveal its update"
        cohort: list[ClientUpdate] = []
        if failure is None and survivors:
            wmax = self.cfg.max_weight if self.weighting == "examples" else 1
            s = scale(self.cfg, len(clients), wmax)
            masked = {}
            for u in sorted(updates, key=lambda x: x.client):
                x = encode(u.delta, self.weight(u), s, self.cfg,
                           seeding.rng(self.root, "secagg", r, _ROUNDING, u.client))
                masked[u.client] = masked_input(keys, u.client, x, self.cfg.bits)
            total, failure = unmask(keys, masked, self.cfg.bits)
            if total is not None:
                ints = decode(total, self.cfg.bits)
                weight = int(ints[0])
                if weight <= 0:
                    return RoundResult([], *round_cost(self.cfg, self.system, d, degrees, survivors, True),
                                       "the summed weight is 0 (no examples)")
                vector = (ints[1:].astype(np.float64) / (s * weight)).astype(np.float32)
                cohort = [ClientUpdate(-1, vector, weight, version)]
        seconds, up, down = round_cost(self.cfg, self.system, d, degrees, survivors,
                                       unmasked=failure is None)
        return RoundResult(cohort, seconds, up, down, failure)


def build(cfg, root: int, strategy, system) -> SecAggStage | None:
    """The stage for the scenario's `secagg:` block, or None for `none` (no arithmetic at all).

    Args:
        cfg: the block (None for stand-in scenarios without one).
        root: the root seed.
        strategy: the strategy (its `weighting`).
        system: the SystemConfig.

    Returns:
        The stage, or None.
    """
    if cfg is None or not getattr(cfg, "active", False):
        return None
    return SecAggStage(cfg, root, getattr(strategy, "weighting", "uniform"), system)
