"""Build a ``tabular`` device (measured ΔG statistics conditioned on G) from ``ltp-ltd`` data.

Model (:class:`crossbar_ctl.devices.TabularDevice`): one pulse of polarity s at G gives
G' = clip(G + μ_s(G) + σ_s(G)·ξ, Gmin, Gmax), ξ ~ N(0, 1), μ_s and σ_s linear between the grid points. Method:

1. Per cell, the window [Gmin_c, Gmax_c] is its lowest and highest read (a device clipped at a bound reads the
   bound); cells whose window is below ``stuck_fraction`` × the median are stuck (counted, not used).
   Population Gmin, Gmax = means over cells, σ_d2d_g_min/g_max = relative standard deviations (as in
   :mod:`crossbar_protocols.fit`). The shape spread is not estimated (written as 0).
2. Every single-pulse step in window units x = (G − Gmin_c)/(Gmax_c − Gmin_c) is one (x₀, x₁, s); the
   simulator treats a device with another window the same way (the table scales with the window).
3. ``bins`` equal bins of x₀ over [0, 1], centres c_b. Per polarity and bin a two-limit Tobit regression
   (:mod:`crossbar_protocols.tobit`) x₁ = β₀ + β₁(x₀ − c_b) + s·ε, censored at 0 and 1, gives μ(c_b) = β₀ − c_b
   and σ(c_b) = s: the regressor makes μ the value at the centre for a μ linear within the bin (not the mean
   over wherever the samples fell), and the censoring undoes the clipping at the bounds, so the table is the
   pre-clip map that the simulator clips itself.
4. A bin with fewer than ``min_samples`` uncensored steps of a polarity (or too little spread of x₀ to fit a
   slope) takes μ, σ interpolated from that polarity's fitted bins (held constant beyond them); listed in
   ``quality['interpolated_bins_up'/'_down']``. μ_up < 0 or μ_down > 0 (noise) is clipped to 0, with a note.
5. Read noise: with ``read.read_noise`` = r in the run's config, each measured ΔG carries the extra variance
   r²(G₀² + G₁²); its bin mean is subtracted from σ² (floored at 0). Without it recorded, reads are taken as
   exact and any read noise ends up in σ. μ is not corrected for errors in variables (binning on a noisy G₀
   flattens μ's slope by var(read)/var(G₀ within the bin), small while r·G is well below the bin width). With
   read noise a clipped device no longer reads its bound exactly, so the censoring in 3. is not seen and the
   windows from 1. widen by a few read-noise deviations: the two edge bins come out biased towards μ = 0
   (measured with r = 1 %: interior bins within 3 standard errors, edge bins off by up to 20). Average repeated
   reads, or use fewer bins, when reads are noisy.
6. In siemens: grid = Gmin + c_b·(Gmax − Gmin), μ and σ × (Gmax − Gmin). The written device uses
   v_ref_V = v_set_V and width_ref_s = width_s, so a set pulse is one nominal pulse; reset pulses of another
   amplitude count n_d = (|V_reset| − V_th)/(V_set − V_th) nominal pulses: μ_down/n_d and σ_down/√n_d (the
   mean is exact, the noise of a stochastically rounded count only approximately so; a note says so).

Quality: per-bin standard errors of μ and σ (Tobit covariance, in S), the standardised one-step residual std of
the uncensored steps (≈ 1 when the table's noise fits), and the measured mean G vs pulse # against a Monte-Carlo
of the table from the same starting states (R², RMS).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossbar_ctl.config import config_from_dict
from crossbar_protocols.base import ProtocolResult
from crossbar_protocols.fit import FitError, ltp_ltd_cells, mean_curves
from crossbar_protocols.tobit import tobit_fit


@dataclass
class TabularFitReport:
    """A fitted ``tabular`` device (``device``: the [device] keys), per-bin standard errors, quality, notes."""

    device: dict[str, Any]
    stderr: dict[str, list[float]]
    quality: dict[str, Any]
    d2d: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    curves: dict[str, np.ndarray] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"model": "tabular", "device": self.device, "stderr": self.stderr, "quality": self.quality,
                "d2d": self.d2d, "notes": self.notes}

    def to_toml(self, source: str = "") -> str:
        """The ``[device]`` section (validated through crossbar_ctl.config), with the fit quality as comments."""
        import tomli_w

        cfg = config_from_dict({"device": self.device}, source or "<fitted device>")  # ConfigError if invalid
        q = self.quality
        head = [f"# tabular device built by crossbar-ctl protocol fit{' from ' + source if source else ''}",
                f"# sigma_c2c is derived from the table when loaded ({cfg.device.sigma_c2c:.4g}: host-side planning "
                "only; the simulator adds no noise beyond dg_*_std_S)",
                f"# cells used {q['cells_fitted']} (stuck {q['cells_stuck']}), single-pulse steps {q['transitions']}, "
                f"bins {q['bins']}",
                f"# standardised residual std {q['standardised_residual_std']:.3f}; mean-curve R² "
                f"{q['r2_mean_curve']:.4f}, RMS {q['mean_curve_rms_S']:.3g} S",
                "# standard errors of dg_up_mean_S: " + ", ".join(f"{v:.3g}" for v in self.stderr["dg_up_mean_S"]),
                "# standard errors of dg_down_mean_S: " + ", ".join(f"{v:.3g}" for v in self.stderr["dg_down_mean_S"])]
        head += [f"# note: {n}" for n in self.notes]
        return "\n".join(head) + "\n" + tomli_w.dumps({"device": self.device})

    def plot(self, path: str | Path) -> Path:
        """Left: μ_up, |μ_down| (± standard error) and σ_up, σ_down vs G. Right: measured mean G vs pulse # against
        the table's Monte-Carlo mean."""
        from crossbar_protocols.plots import NS, _figure

        d, se, c = self.device, self.stderr, self.curves
        g = np.asarray(d["g_grid_S"]) * NS
        fig, (a, b) = _figure(12, 4.4, 2)
        for key, col, lab in (("dg_up_mean_S", "#d62728", "μ_up (potentiation)"),
                              ("dg_down_mean_S", "#1f77b4", "|μ_down| (depression)")):
            a.errorbar(g, np.abs(d[key]) * NS, yerr=np.asarray(se[key]) * NS, color=col, marker="o", ms=3,
                       capsize=2, lw=1.4, label=f"mean step {lab}")
        for key, col, lab in (("dg_up_std_S", "#d62728", "σ_up"), ("dg_down_std_S", "#1f77b4", "σ_down")):
            a.plot(g, np.asarray(d[key]) * NS, color=col, ls="--", lw=1.0, label=f"cycle-to-cycle std {lab}")
        a.set_xlabel("conductance G before the pulse (nS)")
        a.set_ylabel("ΔG per pulse (nS)")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
        a.set_title("tabular device: ΔG statistics per bin")
        n = c["pulse_index"]
        b.plot(n, c["mean_measured_S"] * NS, color="k", lw=1.6, label="measured mean")
        b.plot(n, c["mean_model_S"] * NS, color="#2ca02c", lw=1.3, ls="--", label="table, mean (Monte-Carlo)")
        b.set_xlabel("pulse # (within cycle)")
        b.set_ylabel("conductance G (nS)")
        b.grid(alpha=0.3)
        b.legend(fontsize=8, loc="lower center")
        b.set_title(f"ltp-ltd data vs the table (mean-curve R² {self.quality['r2_mean_curve']:.4f})")
        out = Path(path)
        fig.savefig(out)
        return out


def _fill(c: np.ndarray, ok: np.ndarray, v: np.ndarray) -> np.ndarray:
    """v at the fitted bins ``ok``, interpolated (held constant beyond them) elsewhere."""
    return np.interp(c, c[ok], v[ok])


def _fit_bins(x0: np.ndarray, x1: np.ndarray, b: np.ndarray, c: np.ndarray, min_samples: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: μ(c_b), σ(c_b), their standard errors, and whether the bin was fitted (else NaN)."""
    nb = c.size
    mu, sd, se_mu, se_sd = (np.full(nb, np.nan) for _ in range(4))
    unc = (x1 > 1e-12) & (x1 < 1 - 1e-12)
    n_unc = np.bincount(b[unc], minlength=nb)
    spread = np.array([np.ptp(x0[unc & (b == k)]) if n_unc[k] else 0.0 for k in range(nb)])
    ok = (n_unc >= min_samples) & (spread > 1e-9)
    for k in np.nonzero(ok)[0]:
        sel = b == k
        X = np.stack([np.ones(int(sel.sum())), x0[sel] - c[k]], axis=1)
        try:
            f = tobit_fit(X, x1[sel], 0.0, 1.0)
        except (ValueError, np.linalg.LinAlgError):
            ok[k] = False
            continue
        mu[k], sd[k] = f.beta[0, 0] - c[k], f.s[0]
        se_mu[k], se_sd[k] = math.sqrt(max(f.cov[0, 0, 0], 0.0)), math.sqrt(max(f.cov[0, 2, 2], 0.0))
    return mu, sd, se_mu, se_sd, ok


def fit_tabular(res: ProtocolResult, bins: int = 16, min_samples: int = 20, v_threshold_V: float | None = None,
                stuck_fraction: float = 0.1, mc_replicas: int = 8, seed: int = 0) -> TabularFitReport:
    """Build a tabular device from an ``ltp-ltd`` result (see the module doc for the method)."""
    if res.protocol != "ltp-ltd":
        raise FitError(f"tabular is built from ltp-ltd data, not {res.protocol}")
    if bins < 2:
        raise FitError(f"bins must be at least 2, got {bins}")
    p = res.params
    if int(p.get("pulses_per_step", 1)) != 1:
        raise FitError("tabular needs the ΔG of single pulses: run ltp-ltd with pulses_per_step = 1")
    cells = ltp_ltd_cells(res, v_threshold_V, stuck_fraction)
    v_set, v_reset, width = cells.v_set, cells.v_reset, cells.width_s
    v_threshold_V, ne_d = cells.v_threshold_V, cells.ne_d
    r_read = float(((res.meta.get("config") or {}).get("read") or {}).get("read_noise", 0.0))
    g, pol, use, stuck_lo = cells.g, cells.pol, cells.ok, cells.stuck_lo
    gmin_u, gmax_u, Rc = cells.gmin[use], cells.gmax[use], cells.window[use]
    x = (g[use] - gmin_u[:, None, None]) / Rc[:, None, None]
    G0, G1 = float(gmin_u.mean()), float(gmax_u.mean())
    R = G1 - G0
    c = (np.arange(bins) + 0.5) / bins
    sp = np.broadcast_to(pol[1:], x[:, :, 1:].shape)
    notes: list[str] = []
    table: dict[str, list[float]] = {}
    stderr: dict[str, list[float]] = {}
    quality: dict[str, Any] = {"bins": bins, "read_noise_corrected": r_read}
    steps = 0
    for sign, name, scale in ((1, "up", 1.0), (-1, "down", ne_d)):
        sel = sp == sign
        x0, x1 = x[:, :, :-1][sel], x[:, :, 1:][sel]
        steps += x0.size
        b = np.minimum((x0 * bins).astype(np.int64), bins - 1)
        mu, sd, se_mu, se_sd, ok = _fit_bins(x0, x1, b, c, min_samples)
        if not ok.any():
            raise FitError(f"no bin has {min_samples} uncensored {name} steps: measure more cells or cycles")
        if r_read > 0:  # extra variance of a ΔG between two noisy reads, window units, mean over each bin
            rc = np.broadcast_to(Rc[:, None, None], sel.shape)[sel]
            lo = np.broadcast_to(gmin_u[:, None, None], sel.shape)[sel]
            extra = r_read**2 * ((x0 * rc + lo) ** 2 + (x1 * rc + lo) ** 2) / rc**2
            m_extra = np.bincount(b, extra, minlength=bins) / np.maximum(np.bincount(b, minlength=bins), 1)
            sd = np.sqrt(np.maximum(sd**2 - m_extra, 0.0))
        quality[f"interpolated_bins_{name}"] = np.nonzero(~ok)[0].tolist()
        quality[f"steps_{name}"] = int(x0.size)
        quality[f"bin_samples_{name}"] = np.bincount(b[(x1 > 1e-12) & (x1 < 1 - 1e-12)], minlength=bins).tolist()
        mu, sd = _fill(c, ok, mu), _fill(c, ok, sd)
        wrong = mu * sign < 0
        if wrong.any():
            notes.append(f"μ_{name} had the wrong sign in bins {np.nonzero(wrong)[0].tolist()} (noise): set to 0")
            mu = np.where(wrong, 0.0, mu)
        if not np.any(mu != 0):
            raise FitError(f"the {name} pulses never move G on average: no tabular device to build")
        se_mu, se_sd = _fill(c, ok, se_mu), _fill(c, ok, se_sd)
        table[f"dg_{name}_mean_S"] = (mu * R / scale).tolist()
        table[f"dg_{name}_std_S"] = (sd * R / math.sqrt(scale)).tolist()
        stderr[f"dg_{name}_mean_S"] = (se_mu * R / scale).tolist()
        stderr[f"dg_{name}_std_S"] = (se_sd * R / math.sqrt(scale)).tolist()
    if abs(ne_d - 1.0) > 1e-12:
        notes.append(f"reset pulses ({v_reset:g} V) count {ne_d:.4g} nominal pulses: the down table is per nominal "
                     "pulse (mean exact, noise of a rounded pulse count approximate)")
    notes.append("shape spread (sigma_d2d_shape) is not estimated for tabular: written as 0")

    def rel_sd(v: np.ndarray) -> float:
        r = float(np.std(v, ddof=1) / np.mean(v)) if len(v) > 1 else 0.0
        return r if r > 1e-9 else 0.0

    d2d = {"g_min": rel_sd(gmin_u), "g_max": rel_sd(gmax_u)}
    n_all = len(cells.window)
    device: dict[str, Any] = {
        "model": "tabular", "g_min_S": G0, "g_max_S": G1, "g_grid_S": (G0 + c * R).tolist(), **table,
        "sigma_d2d_g_min": min(d2d["g_min"], 0.5), "sigma_d2d_g_max": min(d2d["g_max"], 0.5),
        "sigma_d2d_shape": 0.0, "stuck_at_min_fraction": stuck_lo / n_all,
        "stuck_at_max_fraction": (n_all - int(use.sum()) - stuck_lo) / n_all, "v_threshold_V": float(v_threshold_V),
        "v_ref_V": v_set, "width_ref_s": width}
    quality.update({"cells_fitted": int(use.sum()), "cells_stuck": int(n_all - use.sum()), "transitions": steps})
    curves = _quality(x, pol, device, quality, G0, R, Rc, gmin_u, ne_d, mc_replicas, seed)
    return TabularFitReport(device=device, stderr=stderr, quality=quality, d2d=d2d, notes=notes, curves=curves)


def _quality(x: np.ndarray, pol: np.ndarray, device: dict[str, Any], quality: dict[str, Any], G0: float, R: float,
             Rc: np.ndarray, gmin: np.ndarray, ne_d: float, replicas: int, seed: int) -> dict[str, np.ndarray]:
    """Standardised one-step residuals and the mean curve against a Monte-Carlo of the table (window units)."""
    c = (np.asarray(device["g_grid_S"]) - G0) / R
    tab = {s: (np.asarray(device[f"dg_{n}_mean_S"]) * f / R, np.asarray(device[f"dg_{n}_std_S"]) * math.sqrt(f) / R)
           for s, n, f in ((1, "up", 1.0), (-1, "down", ne_d))}
    z = []
    for s, (mu, sd) in tab.items():
        sel = np.broadcast_to(pol[1:], x[:, :, 1:].shape) == s
        x0, x1 = x[:, :, :-1][sel], x[:, :, 1:][sel]
        unc = (x1 > 1e-12) & (x1 < 1 - 1e-12)
        sig = np.interp(x0[unc], c, sd)
        z.append(((x1 - x0 - np.interp(x0, c, mu))[unc] / np.where(sig > 0, sig, np.nan)))
    zz = np.concatenate(z)
    quality["standardised_residual_std"] = float(np.nanstd(zz)) if np.isfinite(zz).any() else float("nan")
    rng = np.random.default_rng(seed)
    cur = np.repeat(x[:, :, :1], replicas, axis=2)
    traj = [cur.copy()]
    for s in pol[1:]:
        if s != 0:
            mu, sd = tab[int(s)]
            cur = np.clip(cur + np.interp(cur, c, mu) + np.interp(cur, c, sd) * rng.standard_normal(cur.shape), 0, 1)
        traj.append(cur.copy())
    _, _, m_meas, m_sim = mean_curves(traj, x, Rc, gmin, quality)
    return {"pulse_index": np.arange(m_meas.size), "mean_measured_S": m_meas, "mean_model_S": m_sim}
