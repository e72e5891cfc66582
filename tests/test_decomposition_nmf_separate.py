"""Tests of ``nmf`` with ``factors="separate"``: ``X^T D+ / B`` and ``X^T D- / B`` factored
independently (``W+ H+^T`` and ``W- H-^T``, rank k each, 2k single-sign pairs)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_decomposition import (
    B,
    M,
    N,
    gradient,
    instance_floats,
    make,
    nonneg_batch,
    run,
    stacked_target,
)


def sep(rank: int = 3, seed: int = 0, **options):
    return make("nmf", rank=rank, seed=seed, factors="separate", **options)


def rel_err(G: np.ndarray, u) -> float:
    return float(np.linalg.norm(G - u.to_dense()) / np.linalg.norm(G))


def part_errors(c, X: np.ndarray, D: np.ndarray) -> tuple[float, float]:
    """``(||A+ - W+ H+^T||, ||A- - W- H-^T||)`` of the factors held by a "separate" compressor."""
    k = c.rank
    Ap, Am = stacked_target(X, D)
    W, H = c.row_factor, c.col_factor
    return (
        float(np.linalg.norm(Ap - W[:, :k] @ H[:, :k].T)),
        float(np.linalg.norm(Am - W[:, k:] @ H[:, k:].T)),
    )


def state_floats(k: int) -> int:
    return 2 * k * (N + M)


# ----------------------------------------------------------------------------- option
@pytest.mark.parametrize("bad", ["Separate", "both", "", None, 1, True, ("separate",)])
def test_bad_factors_value_lists_the_allowed_ones(bad) -> None:
    with pytest.raises(ValueError, match="nmf: factors must be one of 'shared', 'separate'"):
        make("nmf", factors=bad)


def test_shared_is_the_default_and_unchanged() -> None:
    default, explicit = make("nmf", seed=3), make("nmf", seed=3, factors="shared")
    assert default.factors == explicit.factors == "shared"
    for t in range(4):
        X, D = nonneg_batch(300 + t)
        np.testing.assert_array_equal(run(default, X, D).U, run(explicit, X, D).U)
    assert "separate" not in default.state_dict()
    assert default.row_factor.shape == (N, 3) and default.col_factor.shape == (2 * M, 3)


def test_rank_limit_is_per_part() -> None:
    """Each part is N x M, so "separate" allows k <= min(N, M); "shared" k <= min(N, 2M)."""
    make("nmf", rank=M + 1)
    sep(rank=M)
    with pytest.raises(ValueError, match=r"rank 17 exceeds min\(N, M\)"):
        sep(rank=M + 1)


# ----------------------------------------------------------------------------- factors, pairs
@pytest.mark.parametrize("passes", [1, 3])
def test_factors_nonnegative_pairs_single_signed_and_balanced(passes: int) -> None:
    k = 3
    c = sep(rank=k, passes=passes)
    for t in range(4):
        X, D = nonneg_batch(310 + t)
        u = run(c, X, D, chunks=3)
        W, H = c.row_factor, c.col_factor
        assert W.shape == (N, 2 * k) and H.shape == (M, 2 * k)
        assert np.all(W >= 0) and np.all(H >= 0)
        assert u.rank == 2 * k and np.all(u.U >= 0)
        assert np.all(u.V[:, :k] >= 0) and np.all(u.V[:, k:] <= 0)
        assert not np.allclose(u.U[:, :k], u.U[:, k:])  # two different row factors
        un, vn = np.linalg.norm(u.U, axis=0), np.linalg.norm(u.V, axis=0)
        live = (un > 0) & (vn > 0)  # a component solved to zero emits a zero product
        np.testing.assert_allclose(un[live], vn[live], rtol=1e-12)
        # the update is W+ H+^T - W- H-^T of the held factors
        ref = W[:, :k] @ H[:, :k].T - W[:, k:] @ H[:, k:].T
        np.testing.assert_allclose(u.to_dense(), ref, rtol=1e-12, atol=1e-15)


def test_split_signs_false_emits_the_same_pairs() -> None:
    """The row factors differ, so there is no k-pair net form: split_signs has no effect."""
    a, b_ = sep(seed=4), sep(seed=4, split_signs=False)
    for t in range(3):
        X, D = nonneg_batch(320 + t)
        ua, ub = run(a, X, D), run(b_, X, D)
        assert ub.rank == 6
        np.testing.assert_array_equal(ua.U, ub.U)
        np.testing.assert_array_equal(ua.V, ub.V)


@pytest.mark.parametrize("passes", [1, 4])
def test_parts_are_independent_factorisations(passes: int) -> None:
    """The + part depends only on D+ and the - part only on D-: changing D- (D+ fixed) leaves
    the + halves of the factors unchanged, and vice versa."""
    k = 2
    X, D = nonneg_batch(330)
    D2 = np.where(D < 0, 3.0 * D - 0.1, D)  # same D+, different D-
    D3 = np.where(D > 0, 0.5 * D + 0.2, D)  # same D-, different D+
    cs = [sep(rank=k, seed=5, passes=passes) for _ in range(3)]
    for _ in range(3):
        for c, d in zip(cs, (D, D2, D3)):
            run(c, X, d)
    (W, H), (W2, H2), (W3, H3) = ((c.row_factor, c.col_factor) for c in cs)
    plus, minus = slice(0, k), slice(k, 2 * k)
    np.testing.assert_allclose(W2[:, plus], W[:, plus], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(H2[:, plus], H[:, plus], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(W3[:, minus], W[:, minus], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(H3[:, minus], H[:, minus], rtol=1e-12, atol=1e-15)
    assert not np.allclose(W2[:, minus], W[:, minus])
    assert not np.allclose(W3[:, plus], W[:, plus])


# ----------------------------------------------------------------------------- monotonicity
def kkt_violation(A: np.ndarray, F: np.ndarray, S: np.ndarray) -> float:
    """Largest violation of the optimality conditions of ``S = argmin_{S >= 0} ||A - F S^T||``
    (``S >= 0``; gradient ``A^T F - S F^T F`` zero where ``S > 0``, ``<= 0`` where ``S = 0``),
    relative to ``||A^T F||``.  Invariant under the column rescaling of F and S."""
    g = A.T @ F - S @ (F.T @ F)
    scale = np.abs(A.T @ F).max()
    viol = np.where(S > 0, np.abs(g), np.maximum(g, 0.0))
    return float(max(viol.max(), np.maximum(-S, 0.0).max()) / scale)


@pytest.mark.parametrize("passes", [1, 3])
def test_every_step_is_the_exact_per_part_solve(passes: int) -> None:
    """After an H step (p = 1, even batches) H+ and H- are the exact NNLS solutions given W+ and
    W- for this batch's A+ and A- (checked against the dense targets); after a W step (odd
    batches, and the last step of every p > 1 batch) likewise W+, W- given H+, H-."""
    k = 3
    c = sep(rank=k, seed=9, passes=passes)
    for t in range(4):
        X, D = nonneg_batch(345 + t)
        run(c, X, D, chunks=3)
        W, H = c.row_factor, c.col_factor
        for part, A in zip((slice(0, k), slice(k, 2 * k)), stacked_target(X, D)):
            if passes == 1 and t % 2 == 0:
                assert kkt_violation(A, W[:, part], H[:, part]) < 1e-10
            else:
                assert kkt_violation(A.T, H[:, part], W[:, part]) < 1e-10


def test_each_part_error_non_increasing_over_repeated_batches() -> None:
    """p = 1: each batch is an exact half step of each part's own ANLS, so for a repeated
    gradient ||A+ - W+ H+^T|| and ||A- - W- H-^T|| never increase (emitted pairs measured)."""
    X, D = nonneg_batch(340)
    Ap, Am = stacked_target(X, D)
    k = 4
    c = sep(rank=k, seed=6)
    e = []
    for _ in range(30):
        u = run(c, X, D, chunks=2)
        e.append(
            (
                np.linalg.norm(Ap - u.U[:, :k] @ u.V[:, :k].T),
                np.linalg.norm(Am + u.U[:, k:] @ u.V[:, k:].T),
            )
        )
        np.testing.assert_allclose(e[-1], part_errors(c, X, D), rtol=1e-10)
    e_ = np.array(e)
    assert np.all(np.diff(e_, axis=0) <= 1e-12 * e_[:-1])
    assert np.all(e_[-1] < 0.6 * e_[0])


def test_each_part_error_non_increasing_over_rounds() -> None:
    """p > 1: p full ANLS rounds per part from the same start; each part's error never
    increases with p (and the first rounds make clear progress)."""
    X, D = nonneg_batch(341)
    k = 4
    errs = []
    for p in (1, 2, 3, 5, 10, 20):
        c = sep(rank=k, seed=7, passes=p)
        run(c, X, D)
        errs.append(part_errors(c, X, D))
    e = np.array(errs)
    assert np.all(np.diff(e, axis=0) <= 1e-12 * e[:-1])
    assert np.all(e[-1] < 0.9 * e[0])


def test_warm_start_continues_the_rounds() -> None:
    """Two batches of the same gradient with 4 passes = one batch with 8 passes."""
    X, D = nonneg_batch(342)
    twice = sep(seed=8, passes=4)
    run(twice, X, D)
    u2 = run(twice, X, D)
    u8 = run(sep(seed=8, passes=8), X, D)
    np.testing.assert_allclose(u2.to_dense(), u8.to_dense(), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- vs shared
@pytest.mark.parametrize("k, mean_bound", [(1, 0.98), (2, 0.96)])
@pytest.mark.parametrize("passes", [1, 20])
def test_separate_beats_shared_on_random_nonnegative_x_gradients(
    k: int, mean_bound: float, passes: int
) -> None:
    """Random gradients (X = relu(normal) + bias, D normal), same rank k, converged (20 one-pass
    batches of the same gradient, or 20 rounds).  Measured ratio separate/shared of the G error
    over these 8 batches: k=1 mean 0.970 (max 0.978), k=2 mean 0.941 (max 0.968), identical for
    both modes to 3 digits; asserted: every batch <= 0.99 and the mean <= 0.98 (k=1) / 0.96 (k=2).
    (The objective is each part's error, not G's, so no per-batch guarantee exists.)"""
    ratios = []
    for s in range(8):
        X, D = nonneg_batch(150 + s)
        G = gradient(X, D)
        e = {}
        for f in ("shared", "separate"):
            c = make("nmf", rank=k, seed=4, factors=f, passes=passes)
            for _ in range(20 if passes == 1 else 1):
                u = run(c, X, D)
            e[f] = rel_err(G, u)
        ratios.append(e["separate"] / e["shared"])
    assert max(ratios) <= 0.99, ratios
    assert np.mean(ratios) <= mean_bound, ratios


# ----------------------------------------------------------------------------- memory
def test_memory_is_the_held_arrays_one_pass() -> None:
    k = 3
    c = sep(rank=k)
    for t in range(2):
        X, D = nonneg_batch(350 + t)
        c.start_batch()
        for i in range(0, B, 8):
            c.consume(X[i : i + 8], D[i : i + 8])
            assert instance_floats(c) == state_floats(k)
        c.finish_batch()
        assert instance_floats(c) == state_floats(k)
        assert c.memory_floats == state_floats(k)


def test_memory_counts_the_buffered_batch() -> None:
    k, step = 3, 5
    c = sep(rank=k, passes=3)
    for t in range(2):
        X, D = nonneg_batch(355 + t)
        c.start_batch()
        for i in range(0, B, step):
            c.consume(X[i : i + step], D[i : i + step])
            assert instance_floats(c) == state_floats(k) + min(i + step, B) * (N + 2 * M)
        c.finish_batch()
        assert instance_floats(c) == state_floats(k)
        assert c.memory_floats == state_floats(k) + B * (N + 2 * M)


def test_memory_at_mnist_layer() -> None:
    """N=785, M=100: 2k(N+M) floats, k=4 -> 7080 (<= N M / 10 = 7850; k=5 would be 8850)."""
    n, m, k = 785, 100, 4
    c = make("nmf", rank=k, n=n, m=m, factors="separate")
    X, D = nonneg_batch(360, n=n, m=m)
    run(c, X, D)
    run(c, X, D)
    assert c.memory_floats == instance_floats(c) == 2 * k * (n + m) == 7080


# ----------------------------------------------------------------------------- chunking, state
def test_chunked_consumption_equals_one_matrix() -> None:
    """passes > 1: the buffer is the same matrix however it arrives (identical outputs);
    p = 1: chunks only reorder the sums of the accumulators (equal up to rounding)."""
    a, b_, c = (sep(seed=5, passes=4) for _ in range(3))
    d1, e1 = sep(seed=5), sep(seed=5)
    for t in range(3):
        X, D = nonneg_batch(370 + t)
        ua, ub = run(a, X, D), run(b_, X, D, chunks=7)
        c.start_batch()
        for x, d in zip(X, D):  # pair by pair, as vectors
            c.consume(x, d)
        uc = c.finish_batch()
        np.testing.assert_array_equal(ua.U, ub.U)
        np.testing.assert_array_equal(ua.V, uc.V)
        np.testing.assert_array_equal(ua.U, uc.U)
        ud, ue = run(d1, X, D), run(e1, X, D, chunks=B)
        np.testing.assert_allclose(ud.to_dense(), ue.to_dense(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("passes", [1, 3])
def test_state_dict_round_trip(passes: int) -> None:
    batches = [nonneg_batch(380 + t) for t in range(6)]
    a = sep(seed=11, passes=passes)
    for X, D in batches[:3]:
        run(a, X, D)
    # as a checkpoint stores it: arrays, and 0-d arrays read back as Python scalars
    state = {
        k: np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v)
        for k, v in a.state_dict().items()
    }
    restored = sep(seed=99, passes=passes)
    restored.load_state_dict(state)
    for X, D in batches[3:]:
        ua, ur = run(a, X, D), run(restored, X, D)
        np.testing.assert_array_equal(ua.U, ur.U)
        np.testing.assert_array_equal(ua.V, ur.V)


def test_state_dict_of_the_other_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="factors='shared'"):
        sep().load_state_dict(make("nmf").state_dict())
    with pytest.raises(ValueError, match="factors='separate'"):
        make("nmf").load_state_dict(sep().state_dict())
    state = sep().state_dict()
    state["H"] = -state["H"]
    with pytest.raises(ValueError, match="non-negative"):
        sep().load_state_dict(state)


# ----------------------------------------------------------------------------- degenerate parts
@pytest.mark.parametrize("passes", [1, 3])
def test_one_sided_and_zero_gradients_then_recovery(passes: int) -> None:
    """D >= 0 makes A- = 0: the - part is solved to zero and restarted, the + part still fits;
    an all-zero batch emits zero; afterwards a general gradient is fitted again."""
    X, D = nonneg_batch(390)
    Dp = np.abs(D)
    Ap = stacked_target(X, Dp)[0]
    c = sep(seed=2, passes=passes)
    for _ in range(4):
        u = run(c, X, Dp)
    assert np.all(u.U[:, 3:] @ u.V[:, 3:].T == 0) and np.all(np.isfinite(u.V))
    assert np.linalg.norm(Ap - u.to_dense()) < 0.6 * np.linalg.norm(Ap)
    assert np.all(run(c, X, 0 * D).to_dense() == 0)
    G = gradient(X, D)
    for _ in range(6):
        u = run(c, X, D)
    assert rel_err(G, u) < 0.8
