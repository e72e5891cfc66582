"""Host-side pulse-count arithmetic in one pass (Numba): rounding a desired update to integer pulse counts, and
the peak/total/row statistics the limits and the op counts need.

A dense update of a 785×100 layer is 78,500 counts per batch; done with numpy it took five temporaries and
six passes (scale, floor, uniforms, compare, cast, then |n| max and sum twice for the limit checks), about a
fifth of a training step at batch 64. Here each is one pass over the data.

Random numbers: stochastic rounding of element k uses u_k = H(key, k) ∈ [0, 1), a SplitMix64 hash of one 64-bit
key drawn from the caller's seeded Generator per call, so results depend only on the seed and the operation
sequence (and not on the number of threads).

The passes run on one thread: a 785×100 layer takes ~50 µs serially, and a parallel region on cores shared with
other work waited up to a scheduler time slice (p90 24 ms, measured on 2 busy cores) for its worker thread.
"""
from __future__ import annotations

import numba
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2^-53


@numba.njit(cache=True, inline="always")
def _unit(key: np.uint64, k: np.uint64) -> float:
    z = key + (k + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    z = z ^ (z >> _S31)
    return float(z >> _S11) * _TO_UNIT


@numba.njit(cache=True)
def round_counts(g: np.ndarray, factor: float, key: np.uint64, stochastic: bool, out: np.ndarray) -> tuple[int, int, int]:
    """out[i, j] = round(factor·g[i, j]) for the (rows, cols) block of g at the top left of ``out`` (the rest of
    ``out`` is left as it is): stochastic rounding ⌊x⌋ + [u < x − ⌊x⌋] or round half away from zero to nearest.
    Returns (max |n|, Σ|n|, rows with a nonzero count) over the block."""
    rows, cols = g.shape
    peak = 0
    total = 0
    nz = 0
    for i in range(rows):
        tot = 0
        base = np.uint64(i) * np.uint64(cols)
        for j in range(cols):
            x = factor * g[i, j]
            lo = np.floor(x)
            if stochastic:
                n = int(lo) + (1 if _unit(key, base + np.uint64(j)) < x - lo else 0)
            else:
                n = int(np.floor(x + 0.5)) if x >= 0 else -int(np.floor(-x + 0.5))
            out[i, j] = n
            a = n if n >= 0 else -n
            tot += a
            if a > peak:
                peak = a
        total += tot
        if tot > 0:
            nz += 1
    return peak, total, nz


@numba.njit(cache=True)
def abs_peak_total(n: np.ndarray) -> tuple[int, int]:
    """(max |n|, Σ|n|) of an integer array (any shape, C-contiguous)."""
    flat = n.ravel()
    pk = 0
    tot = 0
    for k in range(flat.size):
        a = flat[k] if flat[k] >= 0 else -flat[k]
        tot += a
        if a > pk:
            pk = a
    return int(pk), int(tot)


@numba.njit(cache=True)
def add_abs(acc: np.ndarray, n: np.ndarray) -> None:
    """acc += |n| over acc's (rows, cols) block of n (top left)."""
    rows, cols = acc.shape
    for i in range(rows):
        for j in range(cols):
            v = n[i, j]
            acc[i, j] += v if v >= 0 else -v


def stochastic_round(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unbiased rounding of a 2-D array: ⌊x⌋ + 1 with probability x − ⌊x⌋ (E[result] = x), as int32."""
    x2 = np.ascontiguousarray(np.atleast_2d(np.asarray(x, dtype=np.float64)))
    out = np.empty(x2.shape, dtype=np.int32)
    round_counts(x2, 1.0, draw_key(rng), True, out)
    return out.reshape(np.shape(x))


def draw_key(rng: np.random.Generator) -> np.uint64:
    """One 64-bit key for :func:`round_counts` from the caller's Generator."""
    return np.uint64(rng.integers(0, 2**63, dtype=np.int64))
