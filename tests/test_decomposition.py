"""Tests of the host-side gradient compressors (crossbar_ctl.decomposition)."""

from __future__ import annotations

import numpy as np
import pytest

from crossbar_ctl.decomposition import (
    COMPRESSORS,
    DenseUpdate,
    LowRankUpdate,
    NMF,
    StreamingPCA,
    make_compressor,
)

N, M, B = 40, 16, 24
ALL = sorted(COMPRESSORS)


def gradient(X: np.ndarray, D: np.ndarray) -> np.ndarray:
    return X.T @ D / X.shape[0]


def nonneg_batch(seed: int, b: int = B, n: int = N, m: int = M) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    X = np.maximum(r.standard_normal((b, n)), 0.0)
    X[:, -1] = 1.0  # bias input
    return X, r.standard_normal((b, m))


def run(c, X: np.ndarray, D: np.ndarray, chunks: int = 1):
    c.start_batch()
    for Xc, Dc in zip(np.array_split(X, chunks), np.array_split(D, chunks)):
        c.consume(Xc, Dc)
    return c.finish_batch()


def make(name: str, rank: int = 3, seed: int = 0, n: int = N, m: int = M, **options):
    return make_compressor(name, n, m, rank, np.random.default_rng(seed), **options)


def sin_angle(A: np.ndarray, B_: np.ndarray) -> float:
    """Sine of the largest principal angle between span(A) and span(B_)."""
    Qa, Qb = np.linalg.qr(A)[0], np.linalg.qr(B_)[0]
    return float(np.linalg.norm(Qb - Qa @ (Qa.T @ Qb), 2))


def instance_floats(obj: object) -> int:
    """Independent count: every ndarray reachable from vars(obj) (also inside lists/dicts)."""
    seen: set[int] = set()

    def walk(v) -> int:
        if isinstance(v, np.ndarray):
            base = v if v.base is None else v.base
            if id(base) in seen:
                return 0
            seen.add(id(base))
            return int(base.size)
        if isinstance(v, (list, tuple)):
            return sum(walk(e) for e in v)
        if isinstance(v, dict):
            return sum(walk(e) for e in v.values())
        return 0

    return sum(walk(v) for v in vars(obj).values())


# ----------------------------------------------------------------------------- registry, interface
def test_registry_names_and_unknown_name_lists_known() -> None:
    assert set(COMPRESSORS) == {"sgd", "mbgd", "svd", "streaming-pca", "nmf"}
    assert COMPRESSORS["streaming-pca"] is StreamingPCA and COMPRESSORS["nmf"] is NMF
    for name, cls in COMPRESSORS.items():
        assert cls.name == name and isinstance(make(name), cls)
    with pytest.raises(ValueError, match="unknown compressor 'pca'") as err:
        make("pca")
    for name in ALL:
        assert name in str(err.value)


def test_unknown_option_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown option"):
        make("streaming-pca", bogus=1)
    with pytest.raises(ValueError, match="rank"):
        make("svd", rank=0)
    with pytest.raises(ValueError, match="exceeds"):
        make("streaming-pca", rank=M + 1)
    with pytest.raises(ValueError, match="Generator"):
        make_compressor("mbgd", N, M, 1, 123)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ALL)
def test_consume_validation(name: str) -> None:
    c = make(name)
    X, D = nonneg_batch(1, b=1)
    with pytest.raises(RuntimeError, match="start_batch"):
        c.consume(X, D)
    c.start_batch()
    with pytest.raises(ValueError, match="expected N"):
        c.consume(np.zeros((1, N + 1)), D)
    with pytest.raises(ValueError, match="expected M"):
        c.consume(X, np.zeros((1, M - 1)))
    with pytest.raises(ValueError, match="rows but delta"):
        c.consume(np.zeros((2, N)), D)
    with pytest.raises(ValueError, match="both be 1-D"):
        c.consume(X[0], D)
    with pytest.raises(ValueError, match="NaN"):
        c.consume(X, np.full((1, M), np.nan))
    with pytest.raises(ValueError, match="NaN or inf"):
        c.consume(np.where(X > 0, np.inf, X), D)
    with pytest.raises(ValueError, match="dtype"):
        c.consume(X.astype(complex), D)
    with pytest.raises(RuntimeError, match="no pairs"):
        c.finish_batch()
    c.consume(X[0], D[0])  # one pair as vectors
    update = c.finish_batch()
    assert isinstance(update, (LowRankUpdate, DenseUpdate))
    assert update.to_dense().shape == (N, M)


@pytest.mark.parametrize("name", ALL)
def test_x_checked_skips_only_the_finiteness_check_of_x(name: str) -> None:
    X, D = nonneg_batch(1, b=1)
    c = make(name)
    c.start_batch()
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        c.consume(bad, D)
    with pytest.raises(ValueError, match="NaN"):
        c.consume(X, np.full((1, M), np.nan), x_checked=True)  # delta is still checked
    with pytest.raises(ValueError, match="expected N"):
        c.consume(np.zeros((1, N + 1)), D, x_checked=True)
    c.consume(X, D, x_checked=True)
    np.testing.assert_allclose(c.finish_batch().to_dense(), run(make(name), X, D).to_dense(), rtol=1e-12)


@pytest.mark.parametrize("name, options", [("streaming-pca", {}), ("nmf", {}), ("nmf", {"factors": "separate"}),
                                           ("mbgd", {}), ("svd", {})])
def test_float32_batches_give_the_float64_update_to_single_precision(name: str, options: dict) -> None:
    c32, c64 = make(name, **options), make(name, **options)
    for seed in range(4):  # both half steps of the alternating methods, twice
        X, D = nonneg_batch(seed, b=64)
        u32 = run(c32, X.astype(np.float32), D.astype(np.float32)).to_dense()
        u64 = run(c64, X, D).to_dense()
        assert u32.dtype == np.float64
        np.testing.assert_allclose(u32, u64, rtol=2e-4, atol=2e-5 * np.abs(u64).max())


@pytest.mark.parametrize("b, n, m", [(24, 300, 7), (1024, 785, 100)])  # row blocks; one call on all cores
def test_add_outer_accumulates_the_product(b: int, n: int, m: int, mocker) -> None:
    from crossbar_ctl.blas import WIDE_MIN_FLOPS
    from crossbar_ctl.decomposition import _linalg

    wide = mocker.spy(_linalg, "wide")
    r = np.random.default_rng(8)
    A, Bm = r.random((b, n), dtype=np.float32), r.standard_normal((b, m)).astype(np.float32)
    acc = r.standard_normal((n, m))
    start = acc.copy()
    _linalg.add_outer(acc, A, Bm)
    np.testing.assert_allclose(acc, start + A.astype(np.float64).T @ Bm, rtol=1e-5, atol=1e-4)
    assert wide.call_count == (1 if 2.0 * b * n * m >= WIDE_MIN_FLOPS else 0)


def test_sgd_is_one_pair_outer_product() -> None:
    X, D = nonneg_batch(2, b=2)
    c = make("sgd")
    u = run(c, X[:1], D[:1])
    assert isinstance(u, LowRankUpdate) and u.rank == 1
    np.testing.assert_array_equal(u.U[:, 0], X[0])
    np.testing.assert_array_equal(u.V[:, 0], D[0])
    c.start_batch()
    with pytest.raises(ValueError, match="exactly one pair"):
        c.consume(X, D)
    c.consume(X[0], D[0])
    with pytest.raises(ValueError, match="exactly one pair"):
        c.consume(X[1], D[1])


# ----------------------------------------------------------------------------- mbgd, svd
def test_mbgd_equals_average_gradient_and_chunking_invariant() -> None:
    X, D = nonneg_batch(3)
    c = make("mbgd")
    whole = run(c, X, D)
    assert isinstance(whole, DenseUpdate)
    np.testing.assert_allclose(whole.G, gradient(X, D), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(run(c, X, D, chunks=5).G, whole.G, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(run(c, X, D, chunks=B).G, whole.G, rtol=1e-13, atol=1e-15)
    # a second batch does not remember the first
    X2, D2 = nonneg_batch(4, b=7)
    np.testing.assert_allclose(run(c, X2, D2).G, gradient(X2, D2), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_svd_is_eckart_young_optimal(k: int) -> None:
    X, D = nonneg_batch(5)
    G = gradient(X, D)
    u = run(make("svd", rank=k), X, D, chunks=3)
    s = np.linalg.svd(G, compute_uv=False)
    err = np.linalg.norm(G - u.to_dense())
    assert abs(err - np.sqrt(np.sum(s[k:] ** 2))) < 1e-9
    np.testing.assert_allclose(np.linalg.norm(u.U, axis=0) ** 2, s[:k], rtol=1e-12)


# ----------------------------------------------------------------------------- streaming PCA
def low_rank_model(r: int, seed: int, n: int = N, m: int = M):
    """Fixed column/row spaces; every batch draws fresh mixing coefficients."""
    g = np.random.default_rng(seed)
    Ax, Ad = g.standard_normal((n, r)), g.standard_normal((m, r))

    def draw(bseed: int) -> tuple[np.ndarray, np.ndarray]:
        h = np.random.default_rng(bseed)
        return h.standard_normal((B, r)) @ Ax.T, h.standard_normal((B, r)) @ Ad.T

    return Ax, Ad, draw


@pytest.mark.parametrize("k", [1, 3])
def test_pca_recovers_rank_k_subspaces_from_fresh_batches(k: int) -> None:
    Ax, Ad, draw = low_rank_model(k, seed=10 + k)
    c = make("streaming-pca", rank=k, seed=1)
    errs = []
    for t in range(6):
        X, D = draw(100 + t)
        G = gradient(X, D)
        errs.append(np.linalg.norm(G - run(c, X, D, chunks=4).to_dense()) / np.linalg.norm(G))
    # Exact arithmetic: column space after batch 1, row space after batch 2 (see module doc);
    # the tolerance is rounding: 1e-9 rad << the requested 1e-3 rad.
    assert sin_angle(c.left_vectors, Ax) < 1e-9
    assert sin_angle(c.right_vectors, Ad) < 1e-9
    assert max(errs[2:]) < 1e-9
    assert errs[0] > 1e-3  # the first batch projects onto a random V: not yet converged


def test_pca_tracks_noisy_low_rank_model() -> None:
    """Rank-2 signal plus small isotropic noise in X and D: angles are at the noise level."""
    Ax, Ad, draw = low_rank_model(2, seed=3)
    noise = np.random.default_rng(4)
    c = make("streaming-pca", rank=2, seed=2)
    for t in range(8):
        X, D = draw(200 + t)
        X = X + 1e-4 * noise.standard_normal(X.shape)
        D = D + 1e-4 * noise.standard_normal(D.shape)
        run(c, X, D)
    assert sin_angle(c.left_vectors, Ax) < 1e-3
    assert sin_angle(c.right_vectors, Ad) < 1e-3


def test_pca_general_gradient_approaches_svd_error() -> None:
    """Full-rank fixed gradient with s_i = 0.6^i: error -> Eckart-Young error (measured <1e-10)."""
    g = np.random.default_rng(7)
    Ox = np.linalg.qr(g.standard_normal((N, M)))[0]
    Od = np.linalg.qr(g.standard_normal((M, M)))[0]
    X = (Ox * 0.6 ** np.arange(M)).T  # M pairs; G = Ox diag(0.6^i) Od^T / M
    D = Od.T
    G = gradient(X, D)
    k = 3
    best = np.sqrt(np.sum(np.linalg.svd(G, compute_uv=False)[k:] ** 2))
    c = make("streaming-pca", rank=k, seed=3)
    errs = [np.linalg.norm(G - run(c, X, D).to_dense()) for _ in range(40)]
    assert errs[0] > 1.5 * best
    assert errs[-1] / best - 1.0 < 1e-10
    assert all(e >= best * (1 - 1e-12) for e in errs)  # never beats the optimum


def test_pca_emits_projection_of_current_batch() -> None:
    """Each batch's update is G V V^T (left batches) or U U^T G (right), with the state's U, V."""
    c = make("streaming-pca", rank=3, seed=4)
    for t in range(5):
        X, D = nonneg_batch(21 + t)
        G = gradient(X, D)
        u = run(c, X, D, chunks=2)
        U, V = c.left_vectors, c.right_vectors
        np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(V.T @ V, np.eye(3), atol=1e-12)
        proj = G @ V @ V.T if t % 2 == 0 else U @ U.T @ G
        np.testing.assert_allclose(u.to_dense(), proj, atol=1e-12)
        assert np.all(np.diff(c.singular_values) <= 0)


def test_pca_zero_gradient_and_rank_deficient_batches() -> None:
    c = make("streaming-pca", rank=4, seed=5)
    X, D = nonneg_batch(30, b=2)  # gradient of rank 2 < k
    run(c, X, D)  # batch 1 projects onto the random V; U then spans col(G) exactly
    for _ in range(3):
        u = run(c, X, D)
        np.testing.assert_allclose(u.to_dense(), gradient(X, D), atol=1e-12)
    u = run(c, X, np.zeros_like(D))
    assert np.all(u.to_dense() == 0)
    np.testing.assert_allclose(c.left_vectors.T @ c.left_vectors, np.eye(4), atol=1e-12)


def test_in_place_orthonormalisation_is_accurate_for_ill_conditioned_input() -> None:
    from crossbar_ctl.decomposition._linalg import orthonormalize_

    g = np.random.default_rng(12)
    Q0 = np.linalg.qr(g.standard_normal((300, 5)))[0]
    A = Q0 * np.array([1.0, 1e-2, 1e-5, 3e-7, 0.0]) @ np.linalg.qr(g.standard_normal((5, 5)))[0]
    A_in = A.copy()
    R = orthonormalize_(A)
    np.testing.assert_allclose(A.T @ A, np.eye(5), atol=1e-13)
    np.testing.assert_allclose(A @ R, A_in, atol=1e-14)


def test_pca_oversample_tracks_more_but_emits_k() -> None:
    X, D = nonneg_batch(31)
    c = make("streaming-pca", rank=2, oversample=3)
    u = run(c, X, D)
    assert u.rank == 2 and c.tracked == 5
    assert c.memory_floats == 5 * (N + M) + 5


# ----------------------------------------------------------------------------- NMF
def stacked_target(X: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return X.T @ np.maximum(D, 0) / len(X), X.T @ np.maximum(-D, 0) / len(X)


def test_nmf_factors_nonnegative_and_pairs_single_signed() -> None:
    X, D = nonneg_batch(40)
    k = 3
    c = make("nmf", rank=k)
    for _ in range(4):
        u = run(c, X, D, chunks=3)
        assert u.rank == 2 * k
        assert np.all(u.U >= 0)
        assert np.all(u.V[:, :k] >= 0) and np.all(u.V[:, k:] <= 0)
        np.testing.assert_array_equal(u.U[:, :k], u.U[:, k:])
        assert np.all(c.row_factor >= 0) and np.all(c.col_factor >= 0)
    signed = run(make("nmf", rank=k, split_signs=False), X, D)
    assert signed.rank == k and np.all(signed.U >= 0)


def test_nmf_error_non_increasing_on_repeated_gradient() -> None:
    """Exact ANLS half steps: the stacked error sqrt(e+^2 + e-^2) never increases; each part
    never increases across a W->H transition (H+ and H- are solved separately given W)."""
    X, D = nonneg_batch(41)
    Ap, Am = stacked_target(X, D)
    k = 4
    c = make("nmf", rank=k, seed=6)
    parts = []
    for _ in range(30):
        u = run(c, X, D, chunks=2)
        parts.append(
            (
                np.linalg.norm(Ap - u.U[:, :k] @ u.V[:, :k].T),
                np.linalg.norm(Am + u.U[:, k:] @ u.V[:, k:].T),
            )
        )
    e = np.array(parts)
    total = np.hypot(e[:, 0], e[:, 1])
    assert np.all(np.diff(total) <= 1e-12 * total[:-1])
    assert total[-1] < 0.6 * total[0]
    w_to_h = slice(1, None, 2)  # batches 1, 3, ... are W steps; each is followed by an H step
    assert np.all(e[2::2] <= e[w_to_h][: len(e[2::2])] * (1 + 1e-12))


def test_nmf_error_decreases_with_rank() -> None:
    X, D = nonneg_batch(42)
    G = gradient(X, D)
    errs = []
    for k in (1, 2, 4, 8):
        c = make("nmf", rank=k, seed=7)
        for _ in range(20):
            u = run(c, X, D)
        errs.append(np.linalg.norm(G - u.to_dense()) / np.linalg.norm(G))
    assert all(b_ < a for a, b_ in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.5


def test_nmf_exact_for_nonnegative_low_rank_target() -> None:
    """A target with an exact rank-2 non-negative factorisation is approached (ANLS converges
    linearly here, one half step per batch: measured 1.2e-3 after 60 batches, 6.6e-5 after 200)."""
    g = np.random.default_rng(8)
    X = g.random((B, 2)) @ g.random((2, N))  # X^T D = P^T (Z^T D): W = P^T, H = [D+^T Z; D-^T Z]
    D = g.standard_normal((B, M))
    G = gradient(X, D)
    c = make("nmf", rank=2, seed=9)
    errs = [np.linalg.norm(G - run(c, X, D).to_dense()) / np.linalg.norm(G) for _ in range(200)]
    assert errs[-1] < 2e-4 and errs[59] < 3e-3


def test_nmf_survives_zero_gradient_batches() -> None:
    """All components solved to zero are restarted; later batches fit the gradient again."""
    X, D = nonneg_batch(45)
    G = gradient(X, D)
    c = make("nmf", rank=3, seed=2)
    for _ in range(2):
        assert np.all(run(c, X, 0 * D).to_dense() == 0)
    errs = [np.linalg.norm(G - run(c, X, D).to_dense()) / np.linalg.norm(G) for _ in range(8)]
    assert np.all(np.diff(errs) <= 1e-12) and errs[-1] < 0.8


def test_nmf_rejects_negative_inputs() -> None:
    X, D = nonneg_batch(43)
    X[3, 5] = -0.5
    c = make("nmf")
    c.start_batch()
    with pytest.raises(ValueError, match="non-negative"):
        c.consume(X, D)


def test_nmf_chunking_invariant() -> None:
    X, D = nonneg_batch(44)
    a, b_ = make("nmf", seed=1), make("nmf", seed=1)
    for _ in range(3):
        ua, ub = run(a, X, D), run(b_, X, D, chunks=B)
        np.testing.assert_allclose(ua.to_dense(), ub.to_dense(), rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------- memory
FORMULAS = {
    "sgd": lambda n, m, k: n + m,
    "mbgd": lambda n, m, k: n * m,
    "svd": lambda n, m, k: n * m + k * (n + m + 1),  # held between batches
    "streaming-pca": lambda n, m, k: k * (n + m) + k,
    "nmf": lambda n, m, k: k * (n + 2 * m),
}


@pytest.mark.parametrize("name", ALL)
def test_memory_is_measured_from_held_arrays(name: str) -> None:
    k = 3
    c = make(name, rank=k)
    X, D = nonneg_batch(50)
    step = 1 if name == "sgd" else 8
    for _ in range(2):
        c.start_batch()
        for i in range(0, step if name == "sgd" else B, step):
            c.consume(X[i : i + step], D[i : i + step])
            assert instance_floats(c) == FORMULAS[name](N, M, k)
        c.finish_batch()
    held = instance_floats(c)
    assert held == FORMULAS[name](N, M, k)
    if name == "svd":  # peak inside finish_batch: the thin SVD factors, r = min(N, M)
        assert c.memory_floats == held + min(N, M) * (N + M + 1)
    else:
        assert c.memory_floats == held


@pytest.mark.parametrize("name", ["streaming-pca", "nmf"])
def test_memory_goal_at_mnist_layer(name: str) -> None:
    """N=785, M=100, k=5: peak state <= N*M/10 = 7850 floats."""
    n, m, k = 785, 100, 5
    c = make(name, rank=k, n=n, m=m)
    X, D = nonneg_batch(51, n=n, m=m)
    run(c, X, D)
    run(c, X, D)
    assert c.memory_floats == instance_floats(c) == FORMULAS[name](n, m, k)
    assert c.memory_floats <= n * m // 10


# ----------------------------------------------------------------------------- state, determinism
@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_and_seed_determinism(name: str) -> None:
    b = 1 if name == "sgd" else B
    batches = [nonneg_batch(60 + t, b=b) for t in range(6)]
    a, same, chunked = make(name, seed=11), make(name, seed=11), make(name, seed=11)
    for X, D in batches[:3]:
        ua, us, uc = run(a, X, D), run(same, X, D), run(chunked, X, D, chunks=b)
        np.testing.assert_array_equal(ua.to_dense(), us.to_dense())  # same seed: identical
        np.testing.assert_allclose(ua.to_dense(), uc.to_dense(), rtol=1e-10, atol=1e-14)
    # as a checkpoint stores it: arrays, and 0-d arrays read back as Python scalars
    state = {k: np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v)
             for k, v in a.state_dict().items()}
    restored = make(name, seed=99)
    restored.load_state_dict(state)
    for X, D in batches[3:]:
        ua, ur = run(a, X, D), run(restored, X, D)
        for f in ("U", "V", "G"):
            if hasattr(ua, f):
                np.testing.assert_array_equal(getattr(ua, f), getattr(ur, f))


def test_different_seeds_differ_and_state_dict_checks_shape() -> None:
    X, D = nonneg_batch(70)
    ua = run(make("streaming-pca", seed=1), X, D).to_dense()
    ub = run(make("streaming-pca", seed=2), X, D).to_dense()
    assert not np.allclose(ua, ub)
    state = make("streaming-pca", rank=2).state_dict()
    with pytest.raises(ValueError, match="rank"):
        make("streaming-pca", rank=3).load_state_dict(state)
    state = make("nmf", rank=2).state_dict()
    state["W"] = -state["W"]
    with pytest.raises(ValueError, match="non-negative"):
        make("nmf", rank=2).load_state_dict(state)
    c = make("streaming-pca")
    c.start_batch()
    with pytest.raises(RuntimeError, match="between batches"):
        c.state_dict()
