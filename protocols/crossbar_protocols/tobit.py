"""Censored linear regression (two-limit Tobit) by Newton's method, batched over independent groups.

Model: y* = X·β + s·ε, ε ~ N(0, 1), observed y = clip(y*, lo, hi). A device clipped at its Gmin/Gmax reports
exactly the bound, so an observation at a bound only says y* ≤ lo (or ≥ hi). Log-likelihood per observation:

    uncensored:  log φ((y − Xβ)/s) − log s
    y ≤ lo:      log Φ((lo − Xβ)/s)          y ≥ hi:  log Φ((Xβ − hi)/s)

In Olsen's parameters θ = (γ, h) = (β/s, 1/s) it is concave, so plain Newton steps with step halving converge
from the least-squares start (noise-free data: the least-squares fit is exact and s = 0). Covariances of (β, s)
are the inverse observed information mapped by the delta method. Everything is vectorised over observations;
per-group sums use ``np.bincount``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_erfc = np.frompyfunc(math.erfc, 1, 1)


def log_ndtr_and_mills(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log Φ(w) and λ(w) = φ(w)/Φ(w), stable for very negative w (asymptotic series below −20)."""
    w = np.asarray(w, dtype=np.float64)
    logphi = -0.5 * w * w - _LOG_SQRT_2PI
    out_log = np.empty_like(w)
    lam = np.empty_like(w)
    far = w < -20.0
    near = ~far
    if near.any():
        cdf = 0.5 * _erfc(-w[near] / math.sqrt(2.0)).astype(np.float64)
        out_log[near] = np.log(cdf)
        lam[near] = np.exp(logphi[near] - out_log[near])
    if far.any():
        wf = w[far]
        series = 1.0 - 1.0 / wf**2 + 3.0 / wf**4
        out_log[far] = logphi[far] - np.log(-wf) + np.log(series)
        lam[far] = -wf / series
    return out_log, lam


@dataclass
class TobitFit:
    """Per group: ``beta`` (G, p), ``s`` (G,), ``cov`` (G, p+1, p+1) of (β, s), log-likelihood, counts."""

    beta: np.ndarray
    s: np.ndarray
    cov: np.ndarray
    loglik: np.ndarray
    n: np.ndarray
    n_censored: np.ndarray
    iterations: int
    converged: bool


def _parts(theta: np.ndarray, X: np.ndarray, y: np.ndarray, lo: float, hi: float, grp: np.ndarray,
           cl: np.ndarray, cu: np.ndarray, n_groups: int, with_derivs: bool = True):
    """Log-likelihood per group and, optionally, gradient and Hessian per group in θ = (γ, h)."""
    p = X.shape[1]
    t = theta[grp]
    gamma, h = t[:, :p], t[:, p]
    xg = np.einsum("ij,ij->i", X, gamma)
    unc = ~(cl | cu)
    ll = np.zeros(len(y))
    z = h * y - xg
    ll[unc] = np.log(h[unc]) - 0.5 * z[unc] ** 2 - _LOG_SQRT_2PI
    w = np.where(cl, h * lo - xg, xg - h * hi)
    cen = ~unc
    logc, lam = log_ndtr_and_mills(w[cen])
    ll[cen] = logc
    ll_g = np.bincount(grp, ll, minlength=n_groups)
    if not with_derivs:
        return ll_g, None, None
    # per-observation vector v and weights c (gradient) and k (curvature): grad = Σ c v, Hess = −Σ k v vᵀ
    v = np.empty((len(y), p + 1))
    c = np.empty(len(y))
    k = np.empty(len(y))
    v[unc, :p] = -X[unc]
    v[unc, p] = y[unc]
    c[unc] = -z[unc]
    k[unc] = 1.0
    sign = np.where(cl[cen], -1.0, 1.0)
    v[cen, :p] = sign[:, None] * X[cen]
    v[cen, p] = np.where(cl[cen], lo, -hi)
    c[cen] = lam
    k[cen] = lam * (w[cen] + lam)
    grad = np.stack([np.bincount(grp, c * v[:, a], minlength=n_groups) for a in range(p + 1)], axis=1)
    hess = np.empty((n_groups, p + 1, p + 1))
    for a in range(p + 1):
        for b in range(a, p + 1):
            hess[:, a, b] = hess[:, b, a] = -np.bincount(grp, k * v[:, a] * v[:, b], minlength=n_groups)
    n_unc = np.bincount(grp, unc.astype(float), minlength=n_groups)
    hg = theta[:, p]
    grad[:, p] += n_unc / hg
    hess[:, p, p] -= n_unc / hg**2
    return ll_g, grad, hess


def tobit_fit(X: np.ndarray, y: np.ndarray, lo: float, hi: float, group: np.ndarray | None = None,
              n_groups: int = 1, max_iter: int = 100, tol: float = 1e-9, atol_bound: float = 1e-12) -> TobitFit:
    """Fit y = clip(Xβ + sε, lo, hi) per group (``group[i]`` in [0, n_groups)). Observations within
    ``atol_bound`` of a bound count as censored there."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    grp = np.zeros(len(y), dtype=np.int64) if group is None else np.asarray(group, dtype=np.int64)
    cl = y <= lo + atol_bound
    cu = y >= hi - atol_bound
    unc = ~(cl | cu)
    p = X.shape[1]
    # least-squares start on the uncensored points (normal equations per group)
    w = unc.astype(np.float64)
    xtx = np.empty((n_groups, p, p))
    xty = np.empty((n_groups, p))
    for a in range(p):
        xty[:, a] = np.bincount(grp, w * X[:, a] * y, minlength=n_groups)
        for b in range(a, p):
            xtx[:, a, b] = xtx[:, b, a] = np.bincount(grp, w * X[:, a] * X[:, b], minlength=n_groups)
    n_unc = np.bincount(grp, w, minlength=n_groups)
    few = np.nonzero(n_unc <= p + 1)[0]
    if few.size:
        raise ValueError(f"group {few[0]}: {int(n_unc[few[0]])} uncensored observations, need more than {p + 1}")
    beta0 = np.linalg.solve(xtx, xty[..., None])[..., 0]
    r = y - np.einsum("ij,ij->i", X, beta0[grp])
    s0 = np.sqrt(np.bincount(grp, w * r * r, minlength=n_groups) / n_unc)
    scale = np.sqrt(np.bincount(grp, w * y * y, minlength=n_groups) / n_unc)
    exact = s0 <= 1e-10 * np.maximum(scale, 1e-300)  # noise-free data: least squares is exact, s = 0
    s0 = np.where(exact, 1.0, s0)
    theta = np.concatenate([beta0 / s0[:, None], 1.0 / s0[:, None]], axis=1)
    ll, grad, hess = _parts(theta, X, y, lo, hi, grp, cl, cu, n_groups)
    converged = False
    it = 0
    eye = np.eye(p + 1)
    for it in range(1, max_iter + 1):
        hess[exact], grad[exact] = -eye, 0.0
        step = np.linalg.solve(-hess, grad[..., None])[..., 0]
        dec = np.einsum("ij,ij->i", grad, step)  # Newton decrement²
        if np.all(dec < tol):
            converged = True
            break
        t = np.ones(n_groups)
        for _ in range(40):
            cand = theta + t[:, None] * step
            bad_h = cand[:, p] <= 0
            ll_c, _, _ = _parts(np.where(bad_h[:, None], theta, cand), X, y, lo, hi, grp, cl, cu, n_groups, False)
            worse = bad_h | (ll_c < ll - 1e-12 * np.abs(ll))
            if not worse.any():
                break
            t[worse] *= 0.5
        theta = theta + t[:, None] * step
        ll, grad, hess = _parts(theta, X, y, lo, hi, grp, cl, cu, n_groups)
    hess[exact] = -eye
    cov_theta = np.linalg.inv(-hess)
    h = theta[:, p]
    J = np.zeros((n_groups, p + 1, p + 1))
    for a in range(p):
        J[:, a, a] = 1.0 / h
        J[:, a, p] = -theta[:, a] / h**2
    J[:, p, p] = -1.0 / h**2
    cov = J @ cov_theta @ J.transpose(0, 2, 1)
    beta, s = theta[:, :p] / h[:, None], 1.0 / h
    beta[exact], s[exact], cov[exact] = beta0[exact], 0.0, 0.0
    return TobitFit(beta=beta, s=s, cov=cov, loglik=ll,
                    n=np.bincount(grp, minlength=n_groups), n_censored=np.bincount(grp, ~unc, minlength=n_groups),
                    iterations=it, converged=converged)
