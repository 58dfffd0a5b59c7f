"""Offline datasets: a pooled training set (to be partitioned) or per-client data, plus a global test set.

Table `DATASETS`: digits, gaussian_mixture, synthetic (LEAF Synthetic(α, β)),
linear_regression (per-client least squares with a closed-form global optimum),
mnist and cifar10 (read from a local folder; see fedsim.data.files).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from fedsim.data.pooled import PerClient, Pooled
from fedsim.scenario.fields import bounded


def _split_global_test(x: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator):
    perm = rng.permutation(len(y))
    n_test = int(round(fraction * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


@dataclass(frozen=True, kw_only=True)
class Digits:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), scaled to [0, 1].

    Args:
        global_test_fraction: share held out as the global test set.
    """

    global_test_fraction: float = bounded(0.2, gt=0.0, lt=1.0)

    def load(self, num_clients: int, rng: np.random.Generator) -> Pooled:
        """Load the bundled digits and hold out `global_test_fraction` of them at random.

        Args:
            num_clients: N (used only by datasets generated per client).
            rng: the `dataset` stream (random held-out split or generation).

        Returns:
            Pooled training and global test arrays, float32 inputs and int64 labels.
        """
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
        xtr, ytr, xte, yte = _split_global_test(x, y.astype(np.int64), self.global_test_fraction, rng)
        return Pooled(xtr, ytr, xte, yte, 10)


@dataclass(frozen=True, kw_only=True)
class GaussianMixture:
    """Classes are isotropic Gaussians around random means: x = μ_y + N(0, I).

    Args:
        num_classes: C.  dim: input dimension.  num_samples: training pool size.
        separation: std of the class means (larger = easier).
        num_test: size of the global test set.
    """

    num_classes: int = bounded(4, ge=2, le=1000)
    dim: int = bounded(10, ge=1, le=100_000)
    num_samples: int = bounded(4000, ge=1, le=50_000_000)
    separation: float = bounded(2.0, gt=0.0)
    num_test: int = bounded(1000, ge=1, le=10_000_000)

    def memory_estimate(self, num_clients: int) -> int:
        """Rough peak bytes while generating and federating (float64 draws + float32 copies)."""
        return 40 * (self.num_samples + self.num_test) * self.dim

    def load(self, num_clients: int, rng: np.random.Generator) -> Pooled:
        """Draw the class means, then the training pool and the global test set.

        Args:
            num_clients: N (used only by datasets generated per client).
            rng: the `dataset` stream (random held-out split or generation).

        Returns:
            Pooled training and global test arrays, float32 inputs and int64 labels.
        """
        means = rng.normal(0.0, self.separation, size=(self.num_classes, self.dim))

        def draw(n: int):
            y = rng.integers(0, self.num_classes, size=n)
            x = means[y] + rng.normal(size=(n, self.dim))
            return x.astype(np.float32), y.astype(np.int64)

        x, y = draw(self.num_samples)
        xt, yt = draw(self.num_test)
        return Pooled(x, y, xt, yt, self.num_classes)


def _client_sizes(num_clients: int, mean: int, sigma: float, minimum: int, rng: np.random.Generator) -> np.ndarray:
    if sigma == 0:
        return np.full(num_clients, mean, dtype=np.int64)
    sizes = rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, size=num_clients)
    return np.maximum(minimum, sizes.round()).astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class Synthetic:
    """LEAF Synthetic(α, β) (Li et al., FedProx): each client has its own softmax model.

    u_k ~ N(0, α), W_k, b_k ~ N(u_k, 1); B_k ~ N(0, β), v_k ~ N(B_k, 1);
    x ~ N(v_k, Σ) with Σ_jj = j^-1.2; y = argmax(W_k x + b_k). Vectorised over clients.

    Args:
        alpha: α, how much client models differ.  beta: β, how much client inputs differ.
        dim: 60 in LEAF.  num_classes: 10 in LEAF.
        samples_per_client: mean local dataset size; size_sigma: lognormal spread (0 = equal).
        num_test: global test examples, drawn from randomly chosen clients' distributions.

    References:
        T. Li, A. K. Sahu, M. Zaheer, M. Sanjabi, A. Talwalkar and V. Smith, "Federated
        Optimization in Heterogeneous Networks" (FedProx), MLSys 2020 (its synthetic
        data experiments); S. Caldas et al., "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097.
    """

    per_client: ClassVar[bool] = True  # generated client by client: needs partition `natural`

    alpha: float = bounded(1.0, ge=0.0)
    beta: float = bounded(1.0, ge=0.0)
    dim: int = bounded(60, ge=1, le=10_000)
    num_classes: int = bounded(10, ge=2, le=1000)
    samples_per_client: int = bounded(50, ge=2, le=1_000_000)
    size_sigma: float = bounded(0.0, ge=0.0, le=5.0)
    num_test: int = bounded(2000, ge=1, le=10_000_000)

    def memory_estimate(self, num_clients: int) -> int:
        """Rough peak bytes: per-client models (n, c, d) plus float64 draws of the examples."""
        rows = num_clients * self.samples_per_client * (1 + self.size_sigma) ** 2 + self.num_test
        return int(num_clients * (self.num_classes + 1) * self.dim * 12 + rows * self.dim * 32)

    def load(self, num_clients: int, rng: np.random.Generator) -> PerClient:
        """Generate every client's data from its own softmax model (see the class docstring).

        Args:
            num_clients: N (used only by datasets generated per client).
            rng: the `dataset` stream (random held-out split or generation).

        Returns:
            Per-client data, client k's rows contiguous; the test set mixes random clients.
        """
        n, d, c = num_clients, self.dim, self.num_classes
        sizes = _client_sizes(n, self.samples_per_client, self.size_sigma, 2, rng)
        u = rng.normal(0, np.sqrt(self.alpha), size=n)
        big_b = rng.normal(0, np.sqrt(self.beta), size=n)
        w = rng.normal(u[:, None, None], 1.0, size=(n, c, d)).astype(np.float32)
        b = rng.normal(u[:, None], 1.0, size=(n, c)).astype(np.float32)
        v = rng.normal(big_b[:, None], 1.0, size=(n, d)).astype(np.float32)
        scale = (np.arange(1, d + 1) ** -1.2) ** 0.5

        def draw(owner: np.ndarray):
            x = (v[owner] + rng.normal(size=(len(owner), d)) * scale).astype(np.float32)
            y = np.empty(len(owner), dtype=np.int64)
            step = max(1, _CHUNK // (c * d))  # w[owner] is (rows, c, d): build it block by block
            for i in range(0, len(owner), step):
                o = owner[i:i + step]
                y[i:i + step] = (np.einsum("ncd,nd->nc", w[o], x[i:i + step]) + b[o]).argmax(1)
            return x, y

        owner = np.repeat(np.arange(n), sizes)
        x, y = draw(owner)
        xt, yt = draw(rng.integers(0, n, size=self.num_test))
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        return PerClient(x, y, offsets, xt, yt, c)


@dataclass(frozen=True, kw_only=True)
class LinearRegression:
    """Per-client least squares with heterogeneous optima and a closed-form global optimum.

    Client k: X_k rows ~ N(0, s_k² I) with input scale s_k ~ U(1 - input_spread, 1 + input_spread),
    w_k = w° + N(0, heterogeneity² I), y = X_k w_k + b° + N(0, noise²). Local loss
    F_k(w) = 1/(2 n_k) ‖[X_k 1] w − y_k‖².  The reported optimum minimises Σ_k p_k F_k with
    p_k = 1/N (`importance: uniform`, FedAU/FedFix's objective) or p_k = n_k / n
    (`importance: examples`, FedAvg's), in closed form:
        w* = (Σ_k p_k A_k / n_k)^{-1} Σ_k p_k b_k / n_k,  A_k = X̃_kᵀX̃_k, b_k = X̃_kᵀy_k.

    Args:
        dim: d.  samples_per_client: n_k (size_sigma > 0 makes it lognormal).
        heterogeneity: spread of client optima.  noise: label noise std.
        input_spread: spread of input scales (different curvatures, 0 = identical).
        num_test: global test examples drawn from the average client.
    """

    per_client: ClassVar[bool] = True  # generated client by client: needs partition `natural`
    regression: ClassVar[bool] = True  # targets are real numbers: needs model `linear`

    dim: int = bounded(5, ge=1, le=100_000)
    samples_per_client: int = bounded(20, ge=1, le=1_000_000)
    size_sigma: float = bounded(0.0, ge=0.0, le=5.0)
    heterogeneity: float = bounded(1.0, ge=0.0)
    noise: float = bounded(0.1, ge=0.0)
    input_spread: float = bounded(0.0, ge=0.0, lt=1.0)
    importance: Literal["uniform", "examples"] = "uniform"
    num_test: int = bounded(1000, ge=1, le=10_000_000)

    def memory_estimate(self, num_clients: int) -> int:
        """Rough peak bytes: float64 x and y, float32 copies, federate's split copies."""
        rows = num_clients * self.samples_per_client * (1 + self.size_sigma) ** 2
        return int(rows * (self.dim + 1) * 32 + num_clients * self.dim * 24 + self.num_test * self.dim * 16)

    def load(self, num_clients: int, rng: np.random.Generator) -> PerClient:
        """Generate every client's least-squares data and the closed-form global optimum.

        Args:
            num_clients: N (used only by datasets generated per client).
            rng: the `dataset` stream (random held-out split or generation).

        Returns:
            Per-client data with `optimum` set (`linear` model layout: weights then bias).
        """
        n, d = num_clients, self.dim
        sizes = _client_sizes(n, self.samples_per_client, self.size_sigma, 1, rng)
        w0 = rng.normal(size=d)
        b0 = float(rng.normal())
        wk = w0 + self.heterogeneity * rng.normal(size=(n, d))
        sk = rng.uniform(1 - self.input_spread, 1 + self.input_spread, size=n)
        owner = np.repeat(np.arange(n), sizes)
        x = rng.normal(size=(len(owner), d))
        y = np.empty(len(owner))
        for i in range(0, len(owner), _CHUNK):  # row blocks: no (rows, d) temporaries per step
            o = owner[i:i + _CHUNK]
            x[i:i + _CHUNK] *= sk[o, None]
            y[i:i + _CHUNK] = np.einsum("nd,nd->n", x[i:i + _CHUNK], wk[o])
        y += b0
        y += self.noise * rng.normal(size=len(owner))
        xt = rng.normal(size=(self.num_test, d))
        yt = xt @ wk.mean(0) + b0 + self.noise * rng.normal(size=self.num_test)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        optimum = least_squares_optimum(x, y, offsets, self.importance)
        return PerClient(x.astype(np.float32), y.astype(np.float32), offsets,
                         xt.astype(np.float32), yt.astype(np.float32), 0, optimum)


@dataclass(frozen=True, kw_only=True)
class LeastSquaresGroups:
    """Least squares where every client of group g has the optimum w_g given in the scenario.

    For the bias experiments of asynchronous FL (Fraboni et al., JMLR 2023, whose analysis
    places client optima and durations by hand): clients are cut into consecutive groups of
    `sizes` clients; client k of group g gets X_k rows ~ N(0, I), y = X_k w_g + N(0, noise²),
    so with `noise: 0` its local optimum is exactly (w_g, bias 0). The reported global optimum
    is the closed form of `linear_regression` (Σ_k p_k A_k/n_k)^{-1} Σ_k p_k b_k/n_k; with
    equal sizes, p_k = 1/N and noise 0 it is Σ_g (sizes_g/N) w_g in expectation over X.

    Args:
        optima: w_g per group, each a list of `dim` numbers.
        sizes: clients per group (in client order); they must add up to data.num_clients.
        samples_per_client: n_k.  noise: label noise std.
        importance: p_k, `uniform` or `examples` (as `linear_regression`).
        num_test: global test examples, drawn from the groups in proportion to their sizes.

    Example:
        dataset: {name: least_squares_groups, optima: [[1.0], [-1.0]], sizes: [5, 5]}
    """

    per_client: ClassVar[bool] = True  # generated client by client: needs partition `natural`
    regression: ClassVar[bool] = True  # targets are real numbers: needs model `linear`

    optima: tuple[tuple[float, ...], ...] = ((1.0,), (-1.0,))
    sizes: tuple[int, ...] = (5, 5)
    samples_per_client: int = bounded(20, ge=1, le=1_000_000)
    noise: float = bounded(0.0, ge=0.0, le=1e6)
    importance: Literal["uniform", "examples"] = "uniform"
    num_test: int = bounded(1000, ge=1, le=10_000_000)

    def validate(self) -> None:
        """Refuse groups that do not line up.

        Raises:
            ValueError: if optima and sizes differ in length, optima differ in dimension, or a
                size is below 1.
        """
        if not self.optima or len(self.optima) != len(self.sizes):
            raise ValueError(f"optima ({len(self.optima)} groups) and sizes ({len(self.sizes)}) must have "
                             "one entry per group")
        if len({len(w) for w in self.optima}) != 1 or not self.optima[0]:
            raise ValueError("every optimum must have the same, non-zero number of coordinates")
        if min(self.sizes) < 1:
            raise ValueError("sizes: every group needs at least 1 client")

    def check_clients(self, num_clients: int) -> list[str]:
        """Problems with `num_clients` registered clients, found before any data is built."""
        total = sum(self.sizes)
        return [] if total == num_clients else [f"sizes: add up to {total}, not data.num_clients ({num_clients})"]

    def load(self, num_clients: int, rng: np.random.Generator) -> PerClient:
        """Generate each group's clients and the closed-form global optimum.

        Args:
            num_clients: N; must equal sum(sizes).
            rng: the `dataset` stream.

        Returns:
            Per-client data with `optimum` set (`linear` model layout: weights then bias).
        """
        problems = self.check_clients(num_clients)
        if problems:
            raise ValueError(problems[0])
        w = np.asarray(self.optima, dtype=np.float64)  # (G, d)
        group = np.repeat(np.arange(len(self.sizes)), self.sizes)  # client -> group
        owner = np.repeat(np.arange(num_clients), self.samples_per_client)
        x = rng.normal(size=(len(owner), w.shape[1]))
        y = np.einsum("nd,nd->n", x, w[group[owner]]) + self.noise * rng.normal(size=len(owner))
        test_group = rng.choice(len(self.sizes), size=self.num_test, p=np.asarray(self.sizes) / num_clients)
        xt = rng.normal(size=(self.num_test, w.shape[1]))
        yt = np.einsum("nd,nd->n", xt, w[test_group]) + self.noise * rng.normal(size=self.num_test)
        offsets = np.arange(num_clients + 1) * self.samples_per_client
        optimum = least_squares_optimum(x, y, offsets, self.importance)
        return PerClient(x.astype(np.float32), y.astype(np.float32), offsets,
                         xt.astype(np.float32), yt.astype(np.float32), 0, optimum)


_CHUNK = 1 << 20  # rows per block when generating / reducing large per-client datasets


def least_squares_optimum(x: np.ndarray, y: np.ndarray, offsets: np.ndarray, importance: str) -> np.ndarray:
    """Closed-form minimiser of Σ_k p_k/(2n_k)‖X̃_k w − y_k‖², in `linear` model layout (weights, bias).

    Vectorised over row blocks (no loop over clients), accumulating in float64.

    Args:
        x: (n, d) all clients' inputs, client k at offsets[k]:offsets[k+1]; X̃ appends a 1 column.
        y: (n,) targets.
        offsets: (N+1,) client boundaries.
        importance: "uniform" (p_k = 1/N) or "examples" (p_k = n_k / n).

    Returns:
        (d + 1,) float64 optimum w*.
    """
    sizes = np.diff(offsets)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    if importance == "uniform":
        scale = 1.0 / sizes[owner]  # p_k / n_k with p_k = 1/N (the 1/N cancels)
    else:
        scale = np.ones(len(owner))  # p_k / n_k = 1/n for every row
    d = x.shape[1] + 1
    a, b = np.zeros((d, d)), np.zeros(d)
    for i in range(0, len(x), _CHUNK):  # row blocks bound the float64 copies (one block = one matmul)
        xa = np.concatenate([x[i:i + _CHUNK], np.ones((len(x[i:i + _CHUNK]), 1))], axis=1).astype(np.float64)
        xs = xa * scale[i:i + _CHUNK, None]
        a += xs.T @ xa
        b += xs.T @ y[i:i + _CHUNK]
    return np.linalg.solve(a, b).astype(np.float64)
