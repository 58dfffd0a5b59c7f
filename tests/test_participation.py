"""Participation processes: long-run frequencies, Markov/cyclic dynamics, traces.

The Bernoulli, Markov and cyclic processes are FedAU's (Wang & Ji, ICLR 2024; official code
IBM/fedau, `WorkerSampler`).
"""

import numpy as np
import pytest

from fedsim.world import participation as P


def ctx(n, seed=0, hist=None):
    return P.Context(n, np.random.default_rng(seed), np.random.default_rng(seed + 100),
                     (lambda: hist) if hist is not None else (lambda: np.full((n, 2), 0.5)))


def frequency(proc, steps):
    return np.mean([proc.online(t, float(t)) for t in range(steps)], axis=0)


def test_full_and_uniform_k():
    assert frequency(P.Full().process(ctx(5)), 3).tolist() == [1.0] * 5
    proc = P.UniformSample(k=3).process(ctx(10))
    masks = [proc.online(t, 0.0) for t in range(200)]
    assert all(m.sum() == 3 for m in masks)
    assert np.allclose(np.mean(masks, axis=0), 0.3, atol=0.08)
    with pytest.raises(ValueError, match="larger than data.num_clients"):
        P.UniformSample(k=11).process(ctx(10))


def test_bernoulli_frequency_matches_probs():
    probs = (0.1, 0.5, 0.9)
    proc = P.Bernoulli(probs=probs).process(ctx(3))
    assert np.allclose(frequency(proc, 20000), probs, atol=0.015)


def test_markov_is_stationary_at_p_and_sticky():
    p = np.array([0.1, 0.5, 0.8])  # p=0.8 forces the b > 1 rescale branch for a=0.5
    proc = P.Markov(probs=tuple(p), a=0.5).process(ctx(3, seed=1))
    masks = np.array([proc.online(t, 0.0) for t in range(40000)])
    assert np.allclose(masks.mean(0), p, atol=0.02)
    # sticky: P(on at t+1 | on at t) = 1 - b with b = a(1/p - 1) (IBM/fedau), 0.1 -> b = 4.5 -> rescaled
    stay = (masks[1:, 1] & masks[:-1, 1]).sum() / masks[:-1, 1].sum()
    assert stay == pytest.approx(1 - 0.5 * (1 / 0.5 - 1), abs=0.02)


def test_cyclic_pattern_is_exact():
    # L=10, p=0.3 -> A=3 on, B=7 off, repeated; long-run frequency exactly 0.3
    proc = P.Cyclic(probs=(0.3,), period=10).process(ctx(1))
    seq = [bool(proc.online(t, 0.0)[0]) for t in range(40)]
    first_on = seq.index(True)
    assert first_on < 7
    assert seq[first_on:first_on + 10] == [True] * 3 + [False] * 7
    assert proc.probs[0] == pytest.approx(0.3)


def test_dirichlet_over_labels_follows_fedau_formula():
    hist = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    c = ctx(3, hist=hist)
    p = P.DirichletOverLabels(mean=0.1, min=0.02, alpha=0.1).probabilities(c)
    m = np.random.default_rng(100).dirichlet([0.1, 0.1])
    expected = np.clip(2 * 0.1 * hist @ m, 0.02, 1.0)
    assert np.allclose(p, expected)


def test_trace_replay(tmp_path):
    f = tmp_path / "trace.csv"
    f.write_text("client,start,end\n0,0,2\n1,1,3\n0,5,6\n")
    proc = P.Trace(path=str(f)).process(ctx(2))
    assert proc.online(0, 0.5).tolist() == [True, False]
    assert proc.online(1, 1.5).tolist() == [True, True]
    assert proc.online(2, 4.0).tolist() == [False, False]
    assert proc.online(3, 5.0).tolist() == [True, False]
    f.write_text("client,start,end\n7,0,1\n")
    with pytest.raises(ValueError, match=r"trace.csv:2: client 7 is not in 0..1"):
        P.Trace(path=str(f)).process(ctx(2))
