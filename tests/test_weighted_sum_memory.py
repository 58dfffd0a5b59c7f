"""weighted_sum streams into one float64 accumulator: O(d) memory, same values as a hand loop."""

import tracemalloc

import numpy as np

from fedsim.strategy.maths import weighted_sum


def test_weighted_sum_memory_is_o_d_and_matches_hand_loop():
    rng = np.random.default_rng(0)
    m, d = 200, 100_000
    vectors = [rng.standard_normal(d).astype(np.float32) for _ in range(m)]
    weights = rng.random(m)
    tracemalloc.start()
    tracemalloc.reset_peak()
    out = weighted_sum(vectors, weights)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * d * 8  # a stack would need m·d·8 = 160 MB
    expected = np.zeros(d, dtype=np.float64)
    for w, v in zip(weights, vectors, strict=True):
        expected += float(w) * v.astype(np.float64)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float64
