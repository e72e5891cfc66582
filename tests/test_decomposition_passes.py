"""Tests of the multi-pass option ``passes`` of ``streaming-pca`` and ``nmf``."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_decomposition import (
    FORMULAS,
    B,
    M,
    N,
    gradient,
    instance_floats,
    low_rank_model,
    make,
    nonneg_batch,
    run,
    stacked_target,
)

METHODS = ["streaming-pca", "nmf"]
#: floats per buffered pair: x and delta (pca), x and [delta+, delta-] (nmf)
WIDTH = {"streaming-pca": N + M, "nmf": N + 2 * M}


def rel_err(G: np.ndarray, u) -> float:
    return float(np.linalg.norm(G - u.to_dense()) / np.linalg.norm(G))


def svd_err(G: np.ndarray, k: int) -> float:
    """Relative Eckart-Young error of the best rank-k approximation."""
    s = np.linalg.svd(G, compute_uv=False)
    return float(np.sqrt(np.sum(s[k:] ** 2)) / np.linalg.norm(G))


def one_batch(name: str, X: np.ndarray, D: np.ndarray, k: int, p: int, seed: int = 0):
    """Fresh compressor (same seed for every p), one batch with ``passes=p``: (update, c)."""
    c = make(name, rank=k, seed=seed, n=X.shape[1], m=D.shape[1], passes=p)
    return run(c, X, D), c


def nmf_stacked_err(c, X: np.ndarray, D: np.ndarray) -> float:
    """``||A - W H^T||_F`` of the factors held by an nmf compressor, ``A = [A+ | A-]``."""
    A = np.hstack(stacked_target(X, D))
    return float(np.linalg.norm(A - c.row_factor @ c.col_factor.T))


# ----------------------------------------------------------------------------- option, p = 1
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_passes_must_be_a_positive_int(name: str, bad) -> None:
    with pytest.raises(ValueError, match=f"{name}: passes must be"):
        make(name, passes=bad)


def test_passes_only_for_the_streaming_methods() -> None:
    with pytest.raises(ValueError, match="unknown option"):
        make("svd", passes=2)


@pytest.mark.parametrize("name", METHODS)
def test_one_pass_is_the_default_streaming_method(name: str) -> None:
    default, explicit = make(name, seed=3), make(name, seed=3, passes=1)
    assert explicit.passes == default.passes == 1
    for t in range(4):
        X, D = nonneg_batch(100 + t)
        np.testing.assert_array_equal(run(default, X, D).to_dense(), run(explicit, X, D).to_dense())
        assert explicit.memory_floats == instance_floats(explicit) == FORMULAS[name](N, M, 3)


# ----------------------------------------------------------------------------- streaming PCA
def test_pca_error_non_increasing_in_passes_and_reaches_svd() -> None:
    """Random non-negative-X gradient (s_6/s_5 = 0.75): subspace iteration from the same start
    never gets worse with more iterations and approaches Eckart-Young (excess measured 3e-11 at
    p=20, 4e-16 at p=30; p=1 is 1.96x the optimum)."""
    X, D = nonneg_batch(91)
    G, k = gradient(X, D), 5
    best = svd_err(G, k)
    errs = np.array([rel_err(G, one_batch("streaming-pca", X, D, k, p)[0]) for p in range(1, 31)])
    assert np.all(np.diff(errs) <= 1e-12)
    assert np.all(errs >= best * (1 - 1e-12))
    assert errs[0] > 1.5 * best  # one half step from a random V
    assert errs[19] / best - 1 < 1e-8 and errs[29] / best - 1 < 1e-10


@pytest.mark.parametrize("k", [3, 5])
def test_pca_decaying_spectrum_converges_in_twenty_passes(k: int) -> None:
    """s_i = 0.8^i: excess error ~ (s_{k+1}/s_k)^{4p}; requested 1e-3 at p=20, measured <4e-7
    (singular values: relative error <= 7e-7)."""
    g = np.random.default_rng(7)
    Ox = np.linalg.qr(g.standard_normal((N, M)))[0]
    Od = np.linalg.qr(g.standard_normal((M, M)))[0]
    X, D = (Ox * 0.8 ** np.arange(M)).T, Od.T
    G = gradient(X, D)
    best = svd_err(G, k)
    ps = (1, 2, 5, 10, 20)
    errs = [rel_err(G, one_batch("streaming-pca", X, D, k, p, seed=3)[0]) for p in ps]
    assert np.all(np.diff(errs) <= 1e-12)
    assert errs[-1] / best - 1 < 1e-6
    u, c = one_batch("streaming-pca", X, D, k, 20, seed=3)
    s = np.linalg.svd(G, compute_uv=False)
    np.testing.assert_allclose(c.singular_values, s[:k], rtol=1e-5)


def test_pca_low_rank_gradient_exact_after_one_full_iteration() -> None:
    """rank(G) = 2 <= k: G V spans col(G), so one full iteration (p >= 2) reproduces G."""
    _, _, draw = low_rank_model(2, seed=4)
    X, D = draw(5)
    G = gradient(X, D)
    assert rel_err(G, one_batch("streaming-pca", X, D, 3, 1)[0]) > 0.1
    for p in (2, 3, 6):
        assert rel_err(G, one_batch("streaming-pca", X, D, 3, p)[0]) < 1e-12


# ----------------------------------------------------------------------------- NMF
def test_nmf_error_non_increasing_in_passes_and_near_svd() -> None:
    """Random non-negative-X gradient, k = 5.  The ANLS objective ||A - W H^T|| (stacked) never
    increases with p; the error of G = A+ - A- is not the objective and may wiggle (measured
    <= 4e-4).  The limit is an NMF stationary point of A, not the SVD of G: measured G error /
    SVD error at p=30 is 1.07-1.17 over five batches (1.14 for this one), so the bound is 1.2;
    p=30 is converged (stacked error measured 7e-4 above p=100's)."""
    X, D = nonneg_batch(82)
    G, k = gradient(X, D), 5
    ps = [1, 2, 3, 5, 10, 20, 30]
    stacked, errs = [], []
    for p in ps:
        u, c = one_batch("nmf", X, D, k, p, seed=2)
        errs.append(rel_err(G, u))
        stacked.append(nmf_stacked_err(c, X, D))
    assert np.all(np.diff(stacked) <= 1e-12 * np.array(stacked[:-1]))
    assert np.all(np.diff(errs) <= 1e-3)
    assert errs[0] > 1.5 * errs[-1]
    assert errs[-1] <= 1.2 * svd_err(G, k)
    _, c100 = one_batch("nmf", X, D, k, 100, seed=2)
    assert stacked[-1] / nmf_stacked_err(c100, X, D) - 1 < 2e-3


def test_nmf_low_rank_nonnegative_target_is_approached() -> None:
    """A has an exact rank-2 non-negative factorisation: error -> 0 (ANLS converges linearly;
    measured 0.48 at p=1, 0.037 at p=2, 1.2e-3 at p=30, 4.1e-4 at p=50)."""
    g = np.random.default_rng(8)
    X = g.random((B, 2)) @ g.random((2, N))
    D = g.standard_normal((B, M))
    G = gradient(X, D)
    errs = [rel_err(G, one_batch("nmf", X, D, 2, p, seed=9)[0]) for p in (1, 2, 5, 10, 30, 50)]
    assert np.all(np.diff(errs) <= 0)
    assert errs[1] < 0.1 * errs[0] and errs[-1] < 1e-3


def test_nmf_multi_pass_factors_nonnegative_and_pairs_single_signed() -> None:
    X, D = nonneg_batch(83)
    u, c = one_batch("nmf", X, D, 3, 4)
    assert u.rank == 6 and np.all(u.U >= 0)
    assert np.all(u.V[:, :3] >= 0) and np.all(u.V[:, 3:] <= 0)
    assert np.all(c.row_factor >= 0) and np.all(c.col_factor >= 0)
    c.start_batch()
    with pytest.raises(ValueError, match="non-negative"):
        c.consume(-X, D)


# ----------------------------------------------------------------------------- shared properties
@pytest.mark.parametrize("name", METHODS)
def test_memory_counts_the_buffered_batch(name: str) -> None:
    """Peak = warm-start state + B * width buffered floats (walked on the instance); the buffer
    is released by finish_batch."""
    k, step = 3, 5
    c = make(name, rank=k, passes=3)
    state = FORMULAS[name](N, M, k)
    for t in range(2):
        X, D = nonneg_batch(110 + t)
        c.start_batch()
        for i in range(0, B, step):
            c.consume(X[i : i + step], D[i : i + step])
            assert instance_floats(c) == state + min(i + step, B) * WIDTH[name]
        c.finish_batch()
        assert instance_floats(c) == state
        assert c.memory_floats == state + B * WIDTH[name]


@pytest.mark.parametrize("name", METHODS)
def test_chunked_consumption_equals_one_matrix(name: str) -> None:
    """The buffer is the same matrix however it arrives, so the outputs are identical."""
    a, b_, c = (make(name, seed=5, passes=4) for _ in range(3))
    for t in range(3):
        X, D = nonneg_batch(120 + t)
        ua, ub = run(a, X, D), run(b_, X, D, chunks=7)
        c.start_batch()
        for x, d in zip(X, D):  # pair by pair, as vectors
            c.consume(x, d)
        uc = c.finish_batch()
        np.testing.assert_array_equal(ua.to_dense(), ub.to_dense())
        np.testing.assert_array_equal(ua.to_dense(), uc.to_dense())


@pytest.mark.parametrize("name", METHODS)
def test_buffer_is_a_copy_of_the_callers_arrays(name: str) -> None:
    X, D = nonneg_batch(125)
    ref = run(make(name, seed=6, passes=3), X, D).to_dense()
    c = make(name, seed=6, passes=3)
    c.start_batch()
    X2, D2 = X.copy(), D.copy()
    c.consume(X2, D2)
    X2[:] = 0.0
    D2[:] = 0.0
    np.testing.assert_array_equal(c.finish_batch().to_dense(), ref)


@pytest.mark.parametrize("name", METHODS)
def test_warm_start_continues_the_iteration(name: str) -> None:
    """Two batches of the same gradient with p passes = one batch with 2p passes (the next batch
    starts from the previous factors: exactly for nmf, up to rounding for pca's rotation)."""
    X, D = nonneg_batch(130)
    twice = make(name, seed=7, passes=4)
    run(twice, X, D)
    u2 = run(twice, X, D)
    u8 = run(make(name, seed=7, passes=8), X, D)
    np.testing.assert_allclose(u2.to_dense(), u8.to_dense(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", METHODS)
def test_zero_gradient_batch_then_recovery(name: str) -> None:
    X, D = nonneg_batch(135)
    G = gradient(X, D)
    c = make(name, seed=8, passes=3)
    assert np.all(run(c, X, 0 * D).to_dense() == 0)
    assert rel_err(G, run(c, X, D)) < 1.2 * svd_err(G, 3)


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_with_passes(name: str) -> None:
    batches = [nonneg_batch(140 + t) for t in range(6)]
    a = make(name, seed=11, passes=3)
    for X, D in batches[:3]:
        run(a, X, D)
    restored = make(name, seed=99, passes=3)
    restored.load_state_dict(a.state_dict())
    for X, D in batches[3:]:
        ua, ur = run(a, X, D), run(restored, X, D)
        np.testing.assert_array_equal(ua.U, ur.U)
        np.testing.assert_array_equal(ua.V, ur.V)
