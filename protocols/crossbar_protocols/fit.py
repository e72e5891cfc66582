"""Fit the ``neurosim-exp`` device model to ``ltp-ltd`` data, and write it as a ``[device]`` TOML section
(``tabular``, measured ΔG statistics instead of a model: :mod:`crossbar_protocols.fit_tabular`).

Model (see :class:`crossbar_ctl.devices.NeuroSimExpDevice`). In window units x = (G − Gmin)/(Gmax − Gmin) one
nominal pulse of either polarity is an affine map with additive cycle-to-cycle noise, clipped to the window:

    x' = clip(x* (1 − b) + b·x + σ_c2c·ε, 0, 1),   b = e^(−1/A),   ε ~ N(0, 1)
    potentiation: x*_p = 1/(1 − e^(−Pmax_p/A_p));   depression: x*_d = 1 − 1/(1 − e^(−Pmax_d/A_d))

so every read-to-read step of ltp-ltd data is one observation of a censored linear regression of x' on x
(a step of k pulses: b → b^k, σ → σ√k). Method:

1. Gmin, Gmax per cell = the lowest and highest G it reads (a device clipped at a bound reads the bound
   exactly); cells with a window below ``stuck_fraction`` × the median are stuck (counted, not fitted).
   Population Gmin/Gmax = means over cells; σ_d2d_g_min/g_max = relative standard deviations.
2. One pooled two-limit Tobit fit per polarity (:mod:`crossbar_protocols.tobit`) over all cells and cycles
   gives (x*(1 − b), b, s): A = −k/ln b, σ_c2c = s/√k, Pmax from x* (formulas above, inverted).
3. Shape spread: per cell one factor f (A' = f·A for both polarities, Pmax and σ as pooled, as the simulator
   draws it) by Newton on the censored log-likelihood; σ_d2d_shape² = var(f) − mean(var(f̂)) (method of moments,
   the estimation variance from the curvature); written only if above twice the sampling error of var(f)
   (else 0, with a note and the detection limit).
4. Quality: one-step residuals (RMS in S and window units, standardised residual std ≈ 1 when the noise model
   fits, R² of the predicted next G), and the mean G vs pulse # against the fitted model's Monte-Carlo mean
   (same starting states and clipping): R² and RMS.

Units: the pulses counted are those applied. The written device uses v_ref_V = |v_set_V| and width_ref_s =
width_s of the run, so a set pulse is one nominal pulse; depression at another amplitude is converted with the
effective-pulse rule (needs v_threshold_V, taken from the rig config unless given). Assumes noise-free reads:
read noise would be absorbed into σ_c2c and bias b towards 0 (errors in variables).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossbar_ctl.config import config_from_dict
from crossbar_ctl.errors import CrossbarError
from crossbar_protocols.base import ProtocolResult
from crossbar_protocols.tobit import tobit_fit

MODELS = ("neurosim-exp", "tabular")
PMAX_CAP = 12.0  # Pmax in units of A when the data cannot place the curve's end (target beyond 1 − e^-12)


class FitError(CrossbarError, ValueError):
    """The data cannot be fitted (wrong protocol, too few cells or steps, a window that does not switch)."""


@dataclass
class FitReport:
    """A fitted device (``device``: the [device] keys), their standard errors and the fit quality."""

    device: dict[str, Any]
    stderr: dict[str, float]
    quality: dict[str, Any]
    polarity: dict[str, dict[str, float]]
    d2d: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    curves: dict[str, np.ndarray] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"model": "neurosim-exp", "device": self.device, "stderr": self.stderr, "quality": self.quality,
                "polarity": self.polarity, "d2d": self.d2d, "notes": self.notes}

    def to_toml(self, source: str = "") -> str:
        """The ``[device]`` section (validated through crossbar_ctl.config), with the fit quality as comments."""
        import tomli_w

        config_from_dict({"device": self.device}, source or "<fitted device>")  # raises ConfigError if invalid
        q = self.quality
        head = [f"# neurosim-exp device fitted by crossbar-ctl protocol fit{' from ' + source if source else ''}",
                f"# cells fitted {q['cells_fitted']} (stuck {q['cells_stuck']}), transitions {q['transitions']}",
                f"# one-step R² {q['r2_one_step']:.4f}, residual RMS {q['residual_rms_S']:.3g} S; "
                f"mean-curve R² {q['r2_mean_curve']:.4f}, RMS {q['mean_curve_rms_S']:.3g} S",
                "# standard errors: " + ", ".join(f"{k} {v:.3g}" for k, v in self.stderr.items())]
        head += [f"# note: {n}" for n in self.notes]
        return "\n".join(head) + "\n" + tomli_w.dumps({"device": self.device})


def _traces(res: ProtocolResult) -> tuple[np.ndarray, np.ndarray]:
    """G (cells, cycles, steps) and the polarity of each step (steps,) from an ltp-ltd table."""
    tb = res.table
    cell, cyc, pulse = tb["cell"], tb["cycle"], tb["pulse"]
    order = np.lexsort((pulse, cyc, cell))
    n_cell, n_cyc = len(np.unique(cell)), len(np.unique(cyc))
    n_steps = len(order) // (n_cell * n_cyc)
    if n_cell * n_cyc * n_steps != len(order):
        raise FitError("ltp-ltd table is not a full (cell × cycle × step) grid")
    g = tb["G_S"][order].reshape(n_cell, n_cyc, n_steps).astype(np.float64)
    pol = tb["polarity"][order].reshape(n_cell, n_cyc, n_steps)[0, 0].astype(np.int64)
    return g, pol


@dataclass
class LtpLtdCells:
    """An ``ltp-ltd`` result prepared for fitting: pulse settings, traces G (cells, cycles, steps) with the
    polarity of each step, per-cell windows, and which cells switch (``ok``) or are stuck low/high."""

    v_set: float
    v_reset: float
    width_s: float
    v_threshold_V: float
    ne_d: float  # nominal pulses per applied reset pulse (effective-pulse rule)
    g: np.ndarray
    pol: np.ndarray
    gmin: np.ndarray
    gmax: np.ndarray
    window: np.ndarray
    ok: np.ndarray
    stuck_lo: int
    stuck_hi: int


def ltp_ltd_cells(res: ProtocolResult, v_threshold_V: float | None, stuck_fraction: float) -> LtpLtdCells:
    """Check the pulse settings against the threshold (from the result's config unless given) and classify the
    cells: a window below ``stuck_fraction`` × the median window is stuck, low or high by where it sits."""
    p = res.params
    v_set, v_reset, width = float(p["v_set_V"]), float(p["v_reset_V"]), float(p["width_s"])
    if v_threshold_V is None:
        v_threshold_V = float(((res.meta.get("config") or {}).get("device") or {}).get("v_threshold_V", 1.2))
    if not v_threshold_V < min(v_set, abs(v_reset)):
        raise FitError(f"pulses ({v_set:g} V, {v_reset:g} V) must exceed v_threshold_V = {v_threshold_V:g} V")
    ne_d = (abs(v_reset) - v_threshold_V) / (v_set - v_threshold_V)
    g, pol = _traces(res)
    gmin_c, gmax_c = g.min(axis=(1, 2)), g.max(axis=(1, 2))
    win = gmax_c - gmin_c
    med = float(np.median(win))
    if med <= 0:
        raise FitError("no cell switched: G never changed (pulses below threshold?)")
    ok = win >= stuck_fraction * med
    if not ok.any():
        raise FitError("no usable cell")
    mid = 0.5 * (np.median(gmin_c[ok]) + np.median(gmax_c[ok]))
    stuck_lo = int(np.sum(~ok & (0.5 * (gmin_c + gmax_c) < mid)))
    return LtpLtdCells(v_set, v_reset, width, float(v_threshold_V), ne_d, g, pol, gmin_c, gmax_c, win, ok,
                       stuck_lo, int(np.sum(~ok)) - stuck_lo)


def mean_curves(traj: list[np.ndarray], x: np.ndarray, R: np.ndarray, gmin: np.ndarray,
                quality: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Measured and Monte-Carlo conductances (S) and their mean curves, from window-normalised traces ``x`` (cells,
    cycles, steps) and replica trajectories ``traj`` (steps × (replicas, cells, cycles)); records the mean curves'
    R² and RMS difference in ``quality``."""
    sim = np.stack(traj, axis=-1) * R[:, None, None, None] + gmin[:, None, None, None]
    meas = x * R[:, None, None] + gmin[:, None, None]
    m_meas, m_sim = meas.mean(axis=(0, 1)), sim.mean(axis=(0, 1, 2))
    quality["r2_mean_curve"] = 1.0 - float(np.sum((m_meas - m_sim) ** 2) / np.sum((m_meas - m_meas.mean()) ** 2))
    quality["mean_curve_rms_S"] = float(np.sqrt(np.mean((m_meas - m_sim) ** 2)))
    return meas, sim, m_meas, m_sim


def _delta_se(fn: Any, x: np.ndarray, cov: np.ndarray) -> float:
    """Standard error of fn(x) by the delta method with a central-difference gradient."""
    grad = np.zeros(len(x))
    for i in range(len(x)):
        h = 1e-6 * max(abs(x[i]), 1e-6)
        e = np.zeros(len(x))
        e[i] = h
        grad[i] = (fn(x + e) - fn(x - e)) / (2 * h)
    return float(math.sqrt(max(grad @ cov @ grad, 0.0)))


def _pmax(a: float, b: float, k: int, up: bool) -> float:
    """Pmax (applied pulses) from the step map (intercept a, slope b) of k-pulse steps; capped at PMAX_CAP·A."""
    A = -k / math.log(b)
    xs = a / (1 - b)
    ratio = 1.0 / xs if up else 1.0 / (1.0 - xs)  # = 1 − e^(−Pmax/A)
    if not 0 < ratio < 1:
        return PMAX_CAP * A
    return min(-A * math.log(1 - ratio), PMAX_CAP * A)


def fit_neurosim_exp(res: ProtocolResult, v_threshold_V: float | None = None, stuck_fraction: float = 0.1,
                     mc_replicas: int = 8, seed: int = 0) -> FitReport:
    """Fit neurosim-exp to an ``ltp-ltd`` result (see the module doc for the method)."""
    if res.protocol != "ltp-ltd":
        raise FitError(f"neurosim-exp is fitted to ltp-ltd data, not {res.protocol}")
    k = int(res.params.get("pulses_per_step", 1))
    c = ltp_ltd_cells(res, v_threshold_V, stuck_fraction)
    v_set, width, v_threshold_V, ne_d = c.v_set, c.width_s, c.v_threshold_V, c.ne_d
    g, pol, ok, stuck_lo, stuck_hi = c.g, c.pol, c.ok, c.stuck_lo, c.stuck_hi
    n_ok = int(ok.sum())
    gmin_u, gmax_u, R = c.gmin[ok], c.gmax[ok], c.window[ok]
    x = (g[ok] - gmin_u[:, None, None]) / R[:, None, None]
    x0, x1, sp = x[:, :, :-1], x[:, :, 1:], np.broadcast_to(pol[1:], x[:, :, 1:].shape)
    cellidx = np.broadcast_to(np.arange(n_ok)[:, None, None], x0.shape)
    fits: dict[str, dict[str, float]] = {}
    stderr: dict[str, float] = {}
    device: dict[str, Any] = {"model": "neurosim-exp"}
    notes: list[str] = []
    pred = np.full(x1.shape, np.nan)
    s_by_pol: dict[int, float] = {}
    for sign, name, ne in ((1, "ltp", 1.0), (-1, "ltd", ne_d)):
        sel = sp == sign
        xa, xb = x0[sel], x1[sel]
        if xa.size < 10:
            raise FitError(f"too few {name} steps to fit ({xa.size})")
        X = np.stack([np.ones_like(xa), xa], axis=1)
        try:
            f = tobit_fit(X, xb, 0.0, 1.0)
        except (ValueError, np.linalg.LinAlgError) as err:
            raise FitError(f"{name}: censored fit failed ({err}); too few steps inside the window") from None
        a, b, s = float(f.beta[0, 0]), float(f.beta[0, 1]), float(f.s[0])
        if not 0 < b < 1:
            raise FitError(f"{name}: fitted step slope b = {b:.4g} is not in (0, 1): no exponential approach")
        pred[sel] = a + b * xa
        vec, cov = np.array([a, b, s]), f.cov[0]
        A_fn = lambda v, ne=ne: -k / math.log(v[1]) * ne  # noqa: E731
        P_fn = lambda v, ne=ne, up=(sign > 0): _pmax(v[0], v[1], k, up) * ne  # noqa: E731
        S_fn = lambda v, ne=ne: v[2] / math.sqrt(k * ne)  # noqa: E731
        A, P, sig = A_fn(vec), P_fn(vec), S_fn(vec)
        if P >= PMAX_CAP * A * (1 - 1e-9):
            notes.append(f"{name}: the curve's end is not determined by the data; Pmax set to {PMAX_CAP:g}·A")
        fits[name] = {"intercept": a, "slope": b, "noise": s, "x_target": a / (1 - b), "A": A, "Pmax": P,
                      "sigma_c2c": sig, "transitions": int(xa.size), "censored": int(f.n_censored[0])}
        key_a, key_p = ("a_ltp", "pmax_ltp") if sign > 0 else ("a_ltd", "pmax_ltd")
        device[key_a], device[key_p] = A, P
        stderr[key_a], stderr[key_p] = _delta_se(A_fn, vec, cov), _delta_se(P_fn, vec, cov)
        s_by_pol[sign] = sig
        stderr[f"sigma_c2c_{name}"] = _delta_se(S_fn, vec, cov)
    for key in ("pmax_ltp", "pmax_ltd", "a_ltp", "a_ltd"):
        if stderr[key] > 0.1 * device[key]:
            notes.append(f"{key} = {device[key]:.4g} is poorly determined (standard error {stderr[key]:.3g}); "
                         f"more cells or cycles narrow it")
    n_p, n_d = fits["ltp"]["transitions"], fits["ltd"]["transitions"]
    sigma = (n_p * s_by_pol[1] ** 2 + n_d * s_by_pol[-1] ** 2) / (n_p + n_d)
    device["sigma_c2c"] = min(math.sqrt(sigma), 1.0)
    device["g_min_S"], device["g_max_S"] = float(gmin_u.mean()), float(gmax_u.mean())
    def sd(v: np.ndarray) -> float:  # relative spread; below 1e-9 it is rounding, not devices
        r = float(np.std(v, ddof=1) / np.mean(v)) if len(v) > 1 else 0.0
        return r if r > 1e-9 else 0.0

    d2d: dict[str, Any] = {"g_min": sd(gmin_u), "g_max": sd(gmax_u)}
    if n_ok > 1 and fits["ltp"]["noise"] > 0 and fits["ltd"]["noise"] > 0:
        f_c, var_c = _shape_factors(x0, x1, sp, cellidx, n_ok, fits)
        good = np.isfinite(var_c)
        raw = float(np.var(f_c[good], ddof=1)) if good.sum() > 1 else 0.0
        var_hat = raw - float(np.mean(var_c[good]))
        se_var = math.sqrt(2.0 / max(int(good.sum()) - 1, 1)) * raw  # Gaussian sampling error of a variance
        d2d["shape"] = math.sqrt(max(var_hat, 0.0))
        d2d["shape_per_cell_noise"] = math.sqrt(float(np.mean(var_c[good])))
        d2d["shape_detection_limit"] = math.sqrt(2.0 * se_var)
        d2d["shape_resolved"] = var_hat > 2.0 * se_var
        if not d2d["shape_resolved"]:
            notes.append(f"shape spread not resolved (estimate {d2d['shape']:.3g}, detection limit "
                         f"{d2d['shape_detection_limit']:.3g} with these cells and cycles): written as 0")
    device["sigma_d2d_g_min"] = min(d2d["g_min"], 0.5)
    device["sigma_d2d_g_max"] = min(d2d["g_max"], 0.5)
    device["sigma_d2d_shape"] = min(d2d["shape"], 0.5) if d2d.get("shape_resolved") else 0.0
    n_all = len(c.window)
    device["stuck_at_min_fraction"] = stuck_lo / n_all
    device["stuck_at_max_fraction"] = stuck_hi / n_all
    device["v_threshold_V"] = float(v_threshold_V)
    device["v_ref_V"] = v_set
    device["width_ref_s"] = width
    stderr["g_min_S"] = float(np.std(gmin_u, ddof=1) / math.sqrt(n_ok)) if n_ok > 1 else 0.0
    stderr["g_max_S"] = float(np.std(gmax_u, ddof=1) / math.sqrt(n_ok)) if n_ok > 1 else 0.0
    quality, curves = _quality(x, x1, sp, pred, R, gmin_u, fits, k, mc_replicas, seed)
    quality.update({"cells_fitted": n_ok, "cells_stuck": int(n_all - n_ok),
                    "transitions": n_p + n_d, "pulses_per_step": k})
    return FitReport(device=device, stderr=stderr, quality=quality, polarity=fits, d2d=d2d, notes=notes,
                     curves=curves)


def _quality(x: np.ndarray, x1: np.ndarray, sp: np.ndarray, pred: np.ndarray, R: np.ndarray, gmin: np.ndarray,
             fits: dict[str, dict[str, float]], k: int, replicas: int,
             seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One-step residual statistics and the mean-curve comparison against a Monte-Carlo of the fitted model."""
    unc = (x1 > 1e-12) & (x1 < 1 - 1e-12) & (sp != 0)
    Rb = np.broadcast_to(R[:, None, None], x1.shape)
    res_x = (x1 - pred)[unc]
    res_s = res_x * Rb[unc]
    g_next = (x1 * Rb + gmin[:, None, None])[unc]
    g_pred = (pred * Rb + gmin[:, None, None])[unc]
    ss_tot = float(np.sum((g_next - g_next.mean()) ** 2))
    noise = np.where(sp[unc] > 0, fits["ltp"]["noise"], fits["ltd"]["noise"])
    quality: dict[str, Any] = {
        "residual_rms_S": float(np.sqrt(np.mean(res_s**2))), "residual_rms_window": float(np.sqrt(np.mean(res_x**2))),
        "standardised_residual_std": float(np.std(res_x / noise)) if np.all(noise > 0) else float("nan"),
        "r2_one_step": 1.0 - float(np.sum((g_next - g_pred) ** 2)) / ss_tot,
    }
    # Monte-Carlo mean of the fitted model from the measured first state of every (cell, cycle)
    rng = np.random.default_rng(seed)
    pol = sp[0, 0]
    cur = np.repeat(x[:, :, :1], replicas, axis=2)  # (cells, cycles, replicas)
    traj = [cur.copy()]
    for step in range(pol.size):
        f = fits["ltp"] if pol[step] > 0 else fits["ltd"]
        if pol[step] == 0:
            traj.append(cur.copy())
            continue
        cur = np.clip(f["intercept"] + f["slope"] * cur + f["noise"] * rng.standard_normal(cur.shape), 0, 1)
        traj.append(cur.copy())
    meas, sim, m_meas, m_sim = mean_curves(traj, x, R, gmin, quality)
    # noise-free curve from the mean start
    det = [float(x[:, :, 0].mean())]
    for s in pol:
        f = fits["ltp"] if s > 0 else fits["ltd"]
        det.append(det[-1] if s == 0 else min(max(f["intercept"] + f["slope"] * det[-1], 0.0), 1.0))
    det_s = np.array(det) * R.mean() + gmin.mean()
    curves = {"pulse_index": np.arange(len(m_meas)) * k, "mean_measured_S": m_meas, "mean_model_S": m_sim,
              "std_measured_S": meas.std(axis=(0, 1)), "std_model_S": sim.std(axis=(0, 1, 2)),
              "noise_free_S": det_s}
    return quality, curves


def _shape_ll(f: np.ndarray, xa: np.ndarray, xb: np.ndarray, pol: np.ndarray, cell: np.ndarray, n: int,
              fits: dict[str, dict[str, float]]) -> np.ndarray:
    """Censored log-likelihood per cell of shape factors ``f``: A → f·A gives b → b^(1/f) and, with Pmax fixed,
    e^(−Pmax/A) → e^(−Pmax/(f·A))."""
    from crossbar_protocols.tobit import log_ndtr_and_mills

    out = np.zeros(len(xa))
    for sign, name in ((1, "ltp"), (-1, "ltd")):
        sel = pol == sign
        fp = fits[name]
        inv = 1.0 / f[cell[sel]]
        b = fp["slope"] ** inv
        q = np.exp(-fp["Pmax"] / fp["A"] * inv)
        xs = 1.0 / (1.0 - q) if sign > 0 else 1.0 - 1.0 / (1.0 - q)
        mu = xs * (1.0 - b) + b * xa[sel]
        y, s = xb[sel], fp["noise"]
        lo, hi = y <= 1e-12, y >= 1 - 1e-12
        unc = ~(lo | hi)
        ll = np.empty(y.shape)
        ll[unc] = -0.5 * ((y[unc] - mu[unc]) / s) ** 2
        w = np.where(lo, -mu / s, (mu - 1.0) / s)[~unc]
        ll[~unc] = log_ndtr_and_mills(w)[0]
        out[sel] = ll
    return np.bincount(cell, out, minlength=n)


def _shape_factors(x0: np.ndarray, x1: np.ndarray, sp: np.ndarray, cellidx: np.ndarray, n: int,
                   fits: dict[str, dict[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell shape factor f and its variance (−1/curvature) by Newton with central differences."""
    sel = sp != 0
    xa, xb, pol, cell = x0[sel], x1[sel], sp[sel], cellidx[sel]
    f = np.ones(n)
    curv = np.full(n, np.nan)
    for _ in range(30):
        h = 1e-3 * f
        l0 = _shape_ll(f, xa, xb, pol, cell, n, fits)
        lp = _shape_ll(f + h, xa, xb, pol, cell, n, fits)
        lm = _shape_ll(f - h, xa, xb, pol, cell, n, fits)
        grad, curv = (lp - lm) / (2 * h), (lp - 2 * l0 + lm) / h**2
        step = np.where(curv < 0, -grad / np.where(curv < 0, curv, -1.0), np.sign(grad) * 0.05)
        step = np.clip(step, -0.2 * f, 0.2 * f)
        f = np.clip(f + step, 0.1, 10.0)
        if np.max(np.abs(step) / f) < 1e-6:
            break
    var = np.where(curv < 0, -1.0 / np.where(curv < 0, curv, -1.0), np.nan)
    return f, var


def fit_result(res: ProtocolResult, model: str = "neurosim-exp", **kw: Any) -> Any:
    """Fit ``model`` to a protocol result: ``neurosim-exp`` (a :class:`FitReport`) or ``tabular`` (a
    :class:`crossbar_protocols.fit_tabular.TabularFitReport`, same interface)."""
    if model not in MODELS:
        raise FitError(f"unknown model {model!r}; fittable models: {', '.join(MODELS)}")
    if model == "tabular":
        from crossbar_protocols.fit_tabular import fit_tabular

        return fit_tabular(res, **kw)
    return fit_neurosim_exp(res, **kw)


def write_fit(report: Any, toml_path: str | Path, result_dir: str | Path | None = None,
              source: str = "") -> list[Path]:
    """Write the [device] TOML (validated) and, with ``result_dir``, ``fit.json`` and ``fit.png`` there."""
    from crossbar_protocols.results import to_json

    written = []
    tp = Path(toml_path)
    tp.parent.mkdir(parents=True, exist_ok=True)
    tp.write_text(report.to_toml(source), encoding="utf-8")
    written.append(tp)
    if result_dir is not None:
        d = Path(result_dir)
        (d / "fit.json").write_text(to_json(report.as_dict(), indent=2) + "\n")
        written.append(d / "fit.json")
        from crossbar_protocols.fit_plot import plot_fit

        plot = getattr(report, "plot", None)  # a report of another model draws its own figure
        written.append(plot(d / "fit.png") if plot else plot_fit(report, d / "fit.png"))
    return written
