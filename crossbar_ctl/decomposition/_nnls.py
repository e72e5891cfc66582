"""Row-wise non-negative least squares in Gram form (numba kernel).

For every row ``t`` of ``T`` (n x k) solve ``min_{w >= 0} 1/2 w^T Q w - t^T w`` with a shared
Gram matrix ``Q = F^T F`` (k x k, positive semi-definite); this is ``min_w ||a - F w||^2`` for a
row ``a`` of a matrix with ``t = F^T a``.  Lawson-Hanson active-set method: move the free variable
with the largest positive gradient ``g = t - Q w`` into the passive set, solve the equality-
constrained problem on the passive set (Cholesky), step back to feasibility when a passive
variable would turn non-positive, until every non-passive gradient is <= tol.  Exact up to
rounding, so it never does worse than any other feasible point (which makes the NMF iterations
monotone).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["nnls_rows_"]


@njit(cache=True)
def _solve_passive(Q, t, passive, new, z, L, idx, y):  # pragma: no cover - compiled
    """``z[P] = Q[P,P]^{-1} t[P]`` (Cholesky), ``z = 0`` off the passive set P.

    The variable ``new`` is factored last; returns False (z is then unusable) if its pivot is
    numerically zero, i.e. its column of F depends linearly on the others in P.
    """
    k = t.shape[0]
    m = 0
    for j in range(k):
        z[j] = 0.0
        if passive[j] and j != new:
            idx[m] = j
            m += 1
    if new >= 0:
        idx[m] = new
        m += 1
    for a in range(m):
        for b in range(a + 1):
            acc = Q[idx[a], idx[b]]
            for c in range(b):
                acc -= L[a, c] * L[b, c]
            if a == b:
                if acc <= 1e-12 * Q[idx[a], idx[a]]:
                    return False
                L[a, a] = np.sqrt(acc)
            else:
                L[a, b] = acc / L[b, b]
    for a in range(m):
        acc = t[idx[a]]
        for c in range(a):
            acc -= L[a, c] * y[c]
        y[a] = acc / L[a, a]
    for a in range(m - 1, -1, -1):
        acc = y[a]
        for c in range(a + 1, m):
            acc -= L[c, a] * y[c]
        y[a] = acc / L[a, a]
    for a in range(m):
        z[idx[a]] = y[a]
    return True


@njit(cache=True)
def nnls_rows_(Q, T):  # pragma: no cover - compiled
    """Overwrite each row ``t`` of ``T`` with ``argmin_{w >= 0} 1/2 w^T Q w - t^T w``."""
    n, k = T.shape
    t = np.empty(k)
    w = np.empty(k)
    z = np.empty(k)
    g = np.empty(k)
    L = np.zeros((k, k))
    idx = np.empty(k, np.int64)
    y = np.empty(k)
    passive = np.zeros(k, np.bool_)
    blocked = np.zeros(k, np.bool_)
    for i in range(n):
        tmax = 0.0
        for j in range(k):
            t[j] = T[i, j]
            w[j] = 0.0
            passive[j] = False
            blocked[j] = Q[j, j] <= 0.0  # a dead column of F: its variable stays 0
            tmax = max(tmax, abs(t[j]))
        tol = 1e-12 * tmax
        for _outer in range(4 * k + 8):
            for j in range(k):
                acc = t[j]
                for c in range(k):
                    acc -= Q[j, c] * w[c]
                g[j] = acc
            new = -1
            gmax = tol
            for j in range(k):
                if not passive[j] and not blocked[j] and g[j] > gmax:
                    gmax = g[j]
                    new = j
            if new < 0:
                break  # KKT conditions hold: g <= tol off P, g = 0 on P
            passive[new] = True
            if not _solve_passive(Q, t, passive, new, z, L, idx, y) or z[new] <= 0.0:
                passive[new] = False  # dependent or no descent (rounding): exclude for this row
                blocked[new] = True
                continue
            for _inner in range(4 * k + 8):
                alpha = 1.0
                jmin = -1
                for j in range(k):
                    if passive[j] and z[j] <= 0.0:
                        step = w[j] / (w[j] - z[j])
                        if step < alpha:
                            alpha = step
                            jmin = j
                if jmin < 0:
                    for j in range(k):
                        w[j] = z[j]
                    break
                for j in range(k):
                    if passive[j]:
                        w[j] += alpha * (z[j] - w[j])
                w[jmin] = 0.0
                for j in range(k):
                    if passive[j] and w[j] <= 0.0:
                        w[j] = 0.0
                        passive[j] = False
                _solve_passive(Q, t, passive, -1, z, L, idx, y)
        for j in range(k):
            T[i, j] = w[j] if w[j] > 0.0 else 0.0
    return T
