"""PNG plots of protocol results (matplotlib's Agg canvas, no pyplot state; conductances in nS).

:func:`plot_result` writes the figures of one result into a directory and returns their paths: ``ltp_ltd.png``
(G vs pulse # with cycles overlaid, and the spread over cells), ``iv.png`` (I–V loops, linear and log |I|),
``retention.png``, ``read_disturb.png``, ``endurance.png`` (on/off window vs cycle), ``array_map_t<k>.png``
(heat maps), ``write_verify.png`` (error and pulse histograms). A user protocol can provide
``plot(result, out_dir) -> list[Path]`` as a method; otherwise it gets none.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from crossbar_protocols.base import ProtocolResult

NS = 1e9  # S -> nS
NA = 1e9  # A -> nA
MAX_LINES = 16
_PLAIN = FuncFormatter(lambda v, _: f"{v:g}")


def _plain_log_y(ax: object) -> None:
    """Ticks of a log y axis at 1, 2, 3, 5 × 10^n, labelled as plain numbers rather than powers of ten."""
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))  # type: ignore[attr-defined]
    ax.yaxis.set_major_formatter(_PLAIN)  # type: ignore[attr-defined]
    ax.yaxis.set_minor_formatter(NullFormatter())  # type: ignore[attr-defined]


def _legend_below(ax: object, ncol: int = 2) -> None:
    """The axes' legend under its x label, outside the data (constrained layout makes room)."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, fontsize=8,  # type: ignore[attr-defined]
              frameon=False)


def _figure(w: float, h: float, ncols: int = 1, nrows: int = 1, **kw: object) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, **kw).ravel())  # type: ignore[arg-type]
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path)
    return path


def _title(res: ProtocolResult) -> str:
    rig = res.meta.get("rig") or {}
    dev = f"{rig.get('kind', '?')}" + (f", {rig.get('preset') or rig.get('model')}" if rig.get("model") else "")
    return f"{res.protocol} — {len(res.cells)} cell(s) — {dev}"


def plot_ltp_ltd(res: ProtocolResult, out: Path) -> list[Path]:
    g = res.arrays["G_S"] * NS  # (cycles, steps, cells)
    pulse = np.unique(res.table["pulse"])
    pol = res.table["polarity"][: len(pulse) * len(res.cells)].reshape(len(pulse), -1)[:, 0]
    switch = pulse[np.argmax(pol < 0) - 1] if np.any(pol < 0) else None
    fig, (a, b) = _figure(11, 4.2, 2)
    cmap = ListedColormap(["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"])
    t, r, c = res.cells[0].tolist()
    for cy in range(g.shape[0]):
        a.plot(pulse, g[cy, :, 0], ".-", ms=2.5, lw=0.8, color=cmap(cy % 8), label=f"cycle {cy + 1}")
    a.set_title(f"cell (tile {t}, row {r}, col {c}): cycles overlaid")
    flat = g.transpose(1, 0, 2).reshape(len(pulse), -1)
    lo, med, hi = np.percentile(flat, [10, 50, 90], axis=1)
    b.fill_between(pulse, lo, hi, color="#1f77b4", alpha=0.25, label="10–90 % of cells × cycles")
    b.plot(pulse, med, color="#1f77b4", lw=1.5, label="median")
    b.set_title(f"all {g.shape[2]} cells, {g.shape[0]} cycles")
    for ax in (a, b):
        lo_y, hi_y = ax.get_ylim()
        ax.set_ylim(lo_y, hi_y + 0.12 * (hi_y - lo_y))  # headroom for the phase labels, above the data
        if switch is not None:
            ax.axvline(switch, color="k", ls="--", lw=0.8)
            ax.text(switch * 0.5, 0.97, "LTP (set pulses)", transform=ax.get_xaxis_transform(), ha="center",
                    va="top")
            ax.text(switch + 0.5 * (pulse[-1] - switch), 0.97, "LTD (reset pulses)",
                    transform=ax.get_xaxis_transform(), ha="center", va="top")
        ax.set_xlabel("pulse # (within cycle)")
        ax.set_ylabel("conductance G (nS)")
        ax.grid(alpha=0.3)
        _legend_below(ax, ncol=3)
    fig.suptitle(_title(res))
    return [_save(fig, out / "ltp_ltd.png")]


def plot_iv(res: ProtocolResult, out: Path) -> list[Path]:
    """Staircase: I–V loops (nA) and log |I| (nA). Pulsed: the remanent G (nS) read after each pulse against the
    pulse voltage, and log |I| of those reads (nA). Points at or above compliance are marked."""
    v, i = res.arrays["v_V"], res.arrays["i_A"] * NA  # (m,), (cells, cycles, m)
    g = res.arrays["G_S"] * NS
    branch = res.table["branch"][: len(v)]
    hit = res.table["compliance"].reshape(i.shape).astype(bool) if "compliance" in res.table else np.zeros(i.shape,
                                                                                                       bool)
    pulsed = res.summary.get("mode") == "pulsed"
    fig, (a, b) = _figure(11, 4.6, 2)
    names = ["0 → V+", "V+ → 0", "0 → V−", "V− → 0"]
    colors = ["#d62728", "#ff9896", "#1f77b4", "#aec7e8"]
    for cy in range(i.shape[1]):
        for k in range(4):
            sel = branch == k
            label = names[k] if cy == 0 else None
            a.plot(v[sel], (g if pulsed else i)[0, cy, sel], ".-", ms=3, lw=1, color=colors[k], label=label)
            nz = sel & (np.abs(i[0, cy]) > 0)
            b.semilogy(v[nz], np.abs(i[0, cy, nz]), ".-", ms=3, lw=1, color=colors[k])
    if hit[0].any():
        comp = res.summary["compliance_A"] * NA
        hv = np.broadcast_to(v, i.shape[1:])[hit[0]]
        ring = {"ls": "none", "marker": "o", "ms": 5, "mfc": "none", "mec": "k", "mew": 0.6}
        a.plot(hv, (g if pulsed else i)[0][hit[0]], label=f"|I| ≥ compliance {comp:g} nA", **ring)
        b.semilogy(hv, np.abs(i[0][hit[0]]), **ring)
        b.axhline(comp, color="k", ls="--", lw=0.8)
        if not pulsed:
            for y in (-comp, comp):
                a.axhline(y, color="k", ls="--", lw=0.8)
    vs, vr = res.summary.get("v_set_detected_V", [None])[0], res.summary.get("v_reset_detected_V", [None])[0]
    for ax in (a, b):
        for vv, lab in ((vs, "set"), (vr, "reset")):
            if vv is not None:
                ax.axvline(vv, color="gray", ls=":", lw=1)
                ax.text(vv, 0.02, f" {lab} {vv:+.2f} V", transform=ax.get_xaxis_transform(), fontsize=8)
        ax.set_xlabel("pulse voltage V (V)" if pulsed else "voltage V (V)")
        ax.grid(alpha=0.3, which="both")
    _plain_log_y(b)
    t, r, c = res.cells[0].tolist()
    if pulsed:
        v_read = res.summary.get("v_read_V")
        a.set_ylabel(f"remanent G (nS), read at {v_read:g} V")
        b.set_ylabel(f"|I| of the read at {v_read:g} V (nA), log scale")
        a.set_title(f"pulsed I–V, cell ({t}, {r}, {c}): G after each pulse")
        b.set_title("read current, log scale")
    else:
        a.set_ylabel("current I (nA)")
        b.set_ylabel("|I| (nA), log scale")
        a.set_title(f"I–V, cell ({t}, {r}, {c})")
        b.set_title("|I|, log scale")
    fig.legend(*a.get_legend_handles_labels(), loc="outside lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(_title(res))
    return [_save(fig, out / "iv.png")]


def plot_retention(res: ProtocolResult, out: Path) -> list[Path]:
    t, g = res.arrays["t_s"], res.arrays["G_S"] * NS
    fig, (a, b) = _figure(11, 4.0, 2)
    for k in range(min(g.shape[1], MAX_LINES)):
        a.plot(t, g[:, k], ".-", ms=3, lw=1, label=f"cell {k}")
        b.plot(t, 100 * (g[:, k] / g[0, k] - 1), ".-", ms=3, lw=1)
    a.set_ylabel("conductance G (nS)")
    b.set_ylabel("drift (G − G₀)/G₀ (%)")
    for ax in (a, b):
        ax.set_xlabel("time after programming t (s)" + (" [simulated]" if res.summary.get("clock") ==
                                                          "SimulatedClock" else ""))
        ax.grid(alpha=0.3)
    _legend_below(a, ncol=4)
    fig.suptitle(_title(res))
    return [_save(fig, out / "retention.png")]


def plot_read_disturb(res: ProtocolResult, out: Path) -> list[Path]:
    g = res.arrays["G_S"] * NS  # (cells, reads)
    n = np.arange(g.shape[1])
    fig, (a, b) = _figure(11, 4.0, 2)
    for k in range(min(g.shape[0], MAX_LINES)):
        a.plot(n, g[k], lw=1, label=f"cell {k}")
        b.plot(n, 100 * (g[k] / g[k, 0] - 1), lw=1)
    a.set_ylabel("conductance G (nS)")
    b.set_ylabel("change (G − G₀)/G₀ (%)")
    for ax in (a, b):
        ax.set_xlabel(f"read # (at {res.summary.get('v_read_V', '?')} V)")
        ax.grid(alpha=0.3)
    _legend_below(a, ncol=4)
    fig.suptitle(_title(res))
    return [_save(fig, out / "read_disturb.png")]


def plot_endurance(res: ProtocolResult, out: Path) -> list[Path]:
    on, off = res.arrays["G_on_S"] * NS, res.arrays["G_off_S"] * NS  # (cycles, cells); NaN after a failure
    cyc = np.arange(1, on.shape[0] + 1)
    ratio = on / off
    fig, (a, b) = _figure(11, 4.0, 2)
    for g, color, name in ((on, "#d62728", "G_on (after set)"), (off, "#1f77b4", "G_off (after reset)")):
        a.fill_between(cyc, np.nanmin(g, axis=1), np.nanmax(g, axis=1), color=color, alpha=0.2,
                       label=f"{name}, min–max over cells")
        a.semilogy(cyc, np.nanmedian(g, axis=1), color=color, lw=1.5, label=f"{name}, median")
    for k in range(min(ratio.shape[1], MAX_LINES)):
        b.semilogy(cyc, ratio[:, k], "-", lw=0.6, color="gray", alpha=0.35, label="cells" if k == 0 else None)
    b.semilogy(cyc, np.nanmedian(ratio, axis=1), color="#2ca02c", lw=1.6, label="median over cells")
    b.semilogy(cyc, np.nanmin(ratio, axis=1), color="#9467bd", lw=1.0, label="worst cell")
    thr = res.summary.get("window_threshold")
    if thr:
        b.axhline(thr, color="k", ls="--", lw=1, label=f"failure threshold {thr:g}")
    fails = [(k, f) for k, f in enumerate(res.summary.get("cycles_to_failure", [])) if f]
    if fails:
        b.plot([f for _, f in fails], [ratio[f - 1, k] for k, f in fails], "kx", ms=8, label="failure")
    a.set_ylabel("conductance G (nS), log scale")
    b.set_ylabel("on/off ratio G_on/G_off, log scale")
    for ax in (a, b):
        _plain_log_y(ax)
        ax.set_xlabel("cycle #")
        ax.grid(alpha=0.3, which="both")
        _legend_below(ax, ncol=2)
    n_f = len(fails)
    fig.suptitle(f"{_title(res)} — {res.summary.get('cycles_run')} cycles, {n_f} failed")
    return [_save(fig, out / "endurance.png")]


def plot_array_map(res: ProtocolResult, out: Path) -> list[Path]:
    paths = []
    tiles = sorted({int(k[1:].split("_", 1)[0]) for k in res.arrays})
    for t in tiles:
        names = [("G0_S", "G as found (nS)"), ("Gmin_S", "Gmin estimate (nS)"), ("Gmax_S", "Gmax estimate (nS)")]
        have = [(n, lab) for n, lab in names if np.isfinite(res.arrays[f"t{t}_{n}"]).any()]
        fig, axes = _figure(4.2 * (len(have) + 1), 4.0, len(have) + 1)
        for ax, (n, lab) in zip(axes, have):
            im = ax.imshow(res.arrays[f"t{t}_{n}"] * NS, cmap="viridis", interpolation="nearest", aspect="auto")
            fig.colorbar(im, ax=ax, label=lab)
            ax.set_title(lab)
        st = res.arrays[f"t{t}_stuck"].astype(float)
        ax = axes[len(have)]
        cm = ListedColormap(["#dddddd", "#2ca02c", "#1f77b4", "#d62728"])
        im = ax.imshow(st + 1, cmap=cm, vmin=-0.5, vmax=3.5, interpolation="nearest", aspect="auto")
        cb = fig.colorbar(im, ax=ax, ticks=[0, 1, 2, 3])
        cb.ax.set_yticklabels(["not mapped", "ok", "stuck low", "stuck high"])
        ax.set_title(f"stuck devices: {int(np.sum(st == 1))} low, {int(np.sum(st == 2))} high")
        for ax in axes:
            ax.set_xlabel("column")
            ax.set_ylabel("row")
        fig.suptitle(f"{_title(res)} — tile {t}")
        paths.append(_save(fig, out / f"array_map_t{t}.png"))
    return paths


def plot_write_verify(res: ProtocolResult, out: Path) -> list[Path]:
    tb = res.table
    ok = tb["success"].astype(bool)
    fig, (a, b, c) = _figure(13, 4.0, 3)
    a.plot(tb["target_S"][ok] * NS, tb["G_S"][ok] * NS, "o", ms=4, color="#2ca02c", label="within tolerance")
    a.plot(tb["target_S"][~ok] * NS, tb["G_S"][~ok] * NS, "x", ms=6, color="#d62728", label="failed")
    lim = [min(tb["target_S"].min(), tb["G_S"].min()) * NS, max(tb["target_S"].max(), tb["G_S"].max()) * NS]
    a.plot(lim, lim, "k--", lw=0.8)
    a.set_xlabel("target G (nS)")
    a.set_ylabel("programmed G (nS)")
    a.legend(fontsize=8)
    err, tol = tb["error_S"] * NS, _tolerance_nS(res)
    relative = bool(np.ptp(tol) > 0)  # tolerance_rel: a tolerance per cell, so histogram error / tolerance
    x = err / tol if relative else err
    span = 3.0 if relative else 3 * float(tol[0])
    b.hist(x[ok], bins=np.linspace(-span, span, 25), color="#2ca02c", label="succeeded")
    lim_tol = 1.0 if relative else float(tol[0])
    for xv in (-lim_tol, lim_tol):
        b.axvline(xv, color="k", ls="--", lw=0.8, label="± tolerance" if xv < 0 else None)
    b.set_xlim(-span, span)
    b.legend(fontsize=8, loc="upper right")
    n_fail = int(np.count_nonzero(~ok))
    fail = "no failed cells"
    if n_fail:
        fail = f"{n_fail} failed, not shown: errors {err[~ok].min():+.1f} … {err[~ok].max():+.1f} nS"
    b.set_title(f"error of the {int(np.count_nonzero(ok))} successful cells\n{fail}", fontsize=10)
    b.set_xlabel("error (G − target) / tolerance" if relative else "error G − target (nS)")
    b.set_ylabel("cells")
    c.hist(tb["pulses"], bins=30, color="#ff7f0e")
    c.set_xlabel("pulses used per cell (pulses)")
    c.set_ylabel("cells")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
    for ax in (b, c):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{_title(res)} — success {100 * res.summary['success_rate']:.1f} %, "
                 f"mean {res.summary['pulses_mean']:.1f} pulses")
    return [_save(fig, out / "write_verify.png")]


def _tolerance_nS(res: ProtocolResult) -> np.ndarray:
    """Per-cell tolerance max(tolerance_S, tolerance_rel·target) in nS."""
    p = res.params
    return np.maximum(float(p.get("tolerance_S", 0.0)), float(p.get("tolerance_rel", 0.0)) * res.table["target_S"]) * NS


PLOTTERS: dict[str, Callable[[ProtocolResult, Path], list[Path]]] = {
    "ltp-ltd": plot_ltp_ltd, "iv-sweep": plot_iv, "retention": plot_retention, "read-disturb": plot_read_disturb,
    "endurance": plot_endurance, "array-map": plot_array_map, "write-verify": plot_write_verify,
}


def plot_result(res: ProtocolResult, out_dir: str | Path) -> list[Path]:
    """Write the plots of ``res`` into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fn = PLOTTERS.get(res.protocol)
    if fn is not None:
        return fn(res, out)
    from crossbar_protocols.base import protocol_class

    custom = getattr(protocol_class(res.protocol), "plot", None)
    return list(custom(res, out)) if callable(custom) else []
