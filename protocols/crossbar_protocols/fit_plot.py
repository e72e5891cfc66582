"""The figure of a device fit: measured mean G vs pulse # against the fitted model, and the fit report."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from crossbar_protocols.plots import NS, _figure

if TYPE_CHECKING:  # pragma: no cover
    from crossbar_protocols.fit import FitReport


def plot_fit(report: "FitReport", path: str | Path) -> Path:
    """Left: mean ± std of G over cells and cycles (measured) with the model's Monte-Carlo mean ± std and its
    noise-free curve. Right: the model's parameters and fit quality as text."""
    c = report.curves
    n = c["pulse_index"]
    fig, (a, b) = _figure(12, 4.4, 2, width_ratios=[1.5, 1])
    m, s = c["mean_measured_S"] * NS, c["std_measured_S"] * NS
    a.fill_between(n, m - s, m + s, color="#1f77b4", alpha=0.2, label="measured mean ± std")
    a.plot(n, m, color="#1f77b4", lw=1.6, label="measured mean")
    mm, ms = c["mean_model_S"] * NS, c["std_model_S"] * NS
    a.plot(n, mm, color="#d62728", lw=1.4, ls="--", label="fitted model, mean (Monte-Carlo)")
    a.plot(n, mm - ms, color="#d62728", lw=0.7, ls=":")
    a.plot(n, mm + ms, color="#d62728", lw=0.7, ls=":", label="fitted model, ± std")
    a.plot(n, c["noise_free_S"] * NS, color="k", lw=1.0, label="fitted model, noise-free")
    a.set_xlabel("pulse # (within cycle)")
    a.set_ylabel("conductance G (nS)")
    a.grid(alpha=0.3)
    a.set_title("ltp-ltd data vs fitted neurosim-exp")
    d, q, se = report.device, report.quality, report.stderr
    lines = [
        f"Gmin = {d['g_min_S'] * NS:.3f} nS  (± {se['g_min_S'] * NS:.3f})",
        f"Gmax = {d['g_max_S'] * NS:.3f} nS  (± {se['g_max_S'] * NS:.3f})",
        f"A_p = {d['a_ltp']:.2f} ± {se['a_ltp']:.2f} pulses,  Pmax_p = {d['pmax_ltp']:.1f} ± {se['pmax_ltp']:.1f}",
        f"A_d = {d['a_ltd']:.2f} ± {se['a_ltd']:.2f} pulses,  Pmax_d = {d['pmax_ltd']:.1f} ± {se['pmax_ltd']:.1f}",
        f"σ_c2c = {d['sigma_c2c']:.4f} of window per √pulse",
        f"d2d: Gmin {d['sigma_d2d_g_min']:.3f}, Gmax {d['sigma_d2d_g_max']:.3f}, shape {d['sigma_d2d_shape']:.3f}"
        f" (detection limit {report.d2d.get('shape_detection_limit', float('nan')):.3f})",
        f"stuck: {d['stuck_at_min_fraction']:.3f} low, {d['stuck_at_max_fraction']:.3f} high",
        "",
        f"cells {q['cells_fitted']} (+{q['cells_stuck']} stuck), steps {q['transitions']}",
        f"one-step R² = {q['r2_one_step']:.4f}, residual RMS = {q['residual_rms_S'] * NS:.3f} nS",
        f"standardised residual std = {q['standardised_residual_std']:.3f} (1 = noise model fits)",
        f"mean-curve R² = {q['r2_mean_curve']:.5f}, RMS = {q['mean_curve_rms_S'] * NS:.3f} nS",
    ]
    b.axis("off")
    b.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9,
           transform=b.transAxes)
    b.set_title("fitted [device] parameters and fit quality")
    b.legend(*a.get_legend_handles_labels(), loc="lower left", fontsize=8, title="left panel",
             title_fontsize=8, frameon=False)  # in the free space under the text, off the data
    out = Path(path)
    fig.savefig(out)
    return out
