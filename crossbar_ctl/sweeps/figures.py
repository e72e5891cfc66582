"""The study's figures from a sweep's groups (matplotlib, Agg backend). Accuracies are drawn in percent.

Every figure uses matplotlib's constrained layout with the legend outside, below the axes."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from crossbar_ctl.sweeps.report import Group

MARKERS = {"rank-seq": "o", "rank-sum": "s"}
LINES = {"rank-seq": "-", "rank-sum": "--"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _split(groups: list[Group]) -> tuple[dict[str, list[Group]], list[Group]]:
    """Ranked groups by series label (each sorted by rank), and the dense (reference) groups."""
    series: dict[str, list[Group]] = {}
    for g in groups:
        if not g.dense:
            series.setdefault(g.series(), []).append(g)
    for s in series.values():
        s.sort(key=lambda g: g.rank or 0)
    return dict(sorted(series.items())), [g for g in groups if g.dense]


def _colors(series: dict[str, list[Group]]) -> dict[str, Any]:
    """One colour per series without its mode (so a method's rank-seq and rank-sum share it)."""
    cmap = _plt().get_cmap("tab10")
    keys = sorted({label.replace(f" {gs[0].training['mode']}", "") for label, gs in series.items()})
    return {label: cmap(keys.index(label.replace(f" {gs[0].training['mode']}", "")) % 10)
            for label, gs in series.items()}


def _style(gs: list[Group]) -> dict[str, Any]:
    mode = gs[0].training["mode"]
    return {"marker": MARKERS.get(mode, "o"), "ls": LINES.get(mode, "-")}


def _ref_lines(ax: Any, dense: list[Group], metric: str, scale: float = 1.0, per_epoch: bool = False) -> None:
    styles = ["--", "-.", ":"]
    for i, g in enumerate(dense):
        mean, std = g.per_epoch(metric) if per_epoch else g.stat(metric)
        ax.axhline(mean * scale, color="black", ls=styles[i % 3], lw=1.3, label=f"{g.series()} (reference; band ± std)")
        if np.isfinite(std):
            ax.axhspan((mean - std) * scale, (mean + std) * scale, color="black", alpha=0.08, lw=0)


def _ceiling(ax: Any, ceiling: float | None) -> None:
    if ceiling is not None:
        ax.axhline(100 * ceiling, color="tab:red", ls=":", lw=1.5, label=f"float network ({100 * ceiling:.1f} %)")


def _finish(fig: Any, ax: Any, path: Path, legend_cols: int = 1) -> Path:
    """Put ax's legend entries below the axes (constrained layout leaves room for them), save, close."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=legend_cols, fontsize=8, frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return path


def _ranks(series: dict[str, list[Group]]) -> list[int]:
    return sorted({g.rank for s in series.values() for g in s if g.rank is not None})


def accuracy_vs_rank(groups: list[Group], path: Path, ceiling: float | None, title: str) -> Path:
    plt = _plt()
    series, dense = _split(groups)
    colors = _colors(series)
    fig, ax = plt.subplots(figsize=(7, 5.5), layout="constrained")
    for label, gs in series.items():
        stats = [g.stat("final_test_accuracy") for g in gs]
        ax.errorbar([g.rank for g in gs], [100 * m for m, _ in stats], yerr=[100 * np.nan_to_num(s) for _, s in stats],
                    color=colors[label], capsize=3, label=label, **_style(gs))
    _ref_lines(ax, dense, "final_test_accuracy", scale=100)
    _ceiling(ax, ceiling)
    ranks = _ranks(series)
    if ranks:
        ax.set_xticks(ranks)
    ax.set_xlabel("rank k of the gradient decomposition")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{title}: test accuracy vs rank (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    return _finish(fig, ax, path, legend_cols=2)


def frontier(groups: list[Group], path: Path, ceiling: float | None, title: str) -> Path:
    """Accuracy vs layer-1 gradient memory; the upper-left (non-dominated) points joined as the frontier.

    Each series is a line over its ranks. A method's modes keep the same memory at a rank, so every distinct
    (method, rank, memory) gets one ``k=`` label in the method's colour: above-left of its best point for the
    most accurate method, below-right of its worst point for the others, so neighbouring labels do not collide."""
    plt = _plt()
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    series, dense = _split(groups)
    colors = _colors(series)
    fig, ax = plt.subplots(figsize=(7.5, 5.5), layout="constrained")
    pts: list[tuple[float, float]] = []
    at: dict[tuple[str, int | None, float], list[float]] = {}  # (method, k, memory) -> accuracies (%)
    color_of: dict[str, Any] = {}
    method_accs: dict[str, list[float]] = {}  # method -> accuracies (%) of all its points
    for label, gs in series.items():
        mems = [g.stat("memory_floats_layer1")[0] for g in gs]
        accs = [g.stat("final_test_accuracy") for g in gs]
        ax.errorbar(mems, [100 * m for m, _ in accs], yerr=[100 * np.nan_to_num(s) for _, s in accs],
                    color=colors[label], capsize=2, lw=1, label=label, **_style(gs))
        for g, mem, (acc, _) in zip(gs, mems, accs):
            pts.append((mem, 100 * acc))
            at.setdefault((g.method, g.rank, mem), []).append(100 * acc)
            color_of[g.method] = colors[label]
            method_accs.setdefault(g.method, []).append(100 * acc)
    top = max(method_accs, key=lambda m: float(np.mean(method_accs[m]))) if method_accs else None
    for (method, rank, mem), point_accs in at.items():
        up = method == top
        ax.annotate(f"k={rank}", (mem, max(point_accs) if up else min(point_accs)), textcoords="offset points",
                    xytext=(-4, 5) if up else (5, -5), ha="right" if up else "left", va="bottom" if up else "top",
                    fontsize=7, color=color_of[method])
    for g in dense:
        (mem, _), (acc, sd) = g.stat("memory_floats_layer1"), g.stat("final_test_accuracy")
        pts.append((mem, 100 * acc))
        ax.errorbar(mem, 100 * acc, yerr=100 * np.nan_to_num(sd), color="black", marker="*", ms=12, capsize=2,
                    ls="none", label=f"{g.series()} (full gradient)")
        ax.annotate(f"{g.series().upper()}: {100 * acc:.1f} %, {mem:,.0f} floats", (mem, 100 * acc),
                    textcoords="offset points", xytext=(-10, 0), ha="right", va="center", fontsize=8)
    best, front = -np.inf, []
    for mem, acc in sorted(pts):
        if acc > best:
            best = acc
            front.append((mem, acc))
    if len(front) > 1:
        ax.step(*zip(*front), where="post", color="gray", lw=1, alpha=0.7, label="frontier (best accuracy so far)")
    _ceiling(ax, ceiling)
    ax.set_xscale("log")
    ax.margins(x=0.08)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("gradient memory of layer 1 (floats, log scale)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{title}: memory / accuracy frontier")
    ax.grid(alpha=0.3, which="both")
    return _finish(fig, ax, path, legend_cols=2)


def pulses_and_ops(groups: list[Group], path: Path, title: str) -> Path:
    plt = _plt()
    series, dense = _split(groups)
    colors = _colors(series)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
    for ax, metric, ylabel in ((axes[0], "device_pulses", "device pulses per epoch (count, log scale)"),
                               (axes[1], "array_ops", "array operations per epoch (count, log scale)")):
        for label, gs in series.items():
            stats = [g.per_epoch(metric) for g in gs]
            ax.errorbar([g.rank for g in gs], [m for m, _ in stats], yerr=[np.nan_to_num(s) for _, s in stats],
                        color=colors[label], capsize=3, label=label, **_style(gs))
        _ref_lines(ax, dense, metric, per_epoch=True)
        ranks = _ranks(series)
        if ranks:
            ax.set_xticks(ranks)
        from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo / 1.25, hi * 1.25)  # keep the reference line off the frame
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(EngFormatter(sep=""))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("rank k of the gradient decomposition")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title("device pulses\n(training updates)")
    axes[1].set_title("array operations\n(reads, pulse phases, row programs)")
    fig.suptitle(f"{title}: cost per epoch (mean ± std over seeds)")
    return _finish(fig, axes[0], path, legend_cols=3)


def learning_curves(groups: list[Group], path: Path, ceiling: float | None, title: str) -> Path:
    """One panel per method/mode series, a line per rank (mean test accuracy over seeds after each epoch)."""
    plt = _plt()
    series, dense = _split(groups)
    panels = list(series.items()) or [("reference", [])]
    ncols = min(2, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.8 * nrows), squeeze=False, sharey=True,
                             layout="constrained")
    ranks = _ranks(series)
    cmap = plt.get_cmap("viridis")
    rank_color = {k: cmap(0.85 * i / max(len(ranks) - 1, 1)) for i, k in enumerate(ranks)}

    def curve(g: Group) -> tuple[np.ndarray, np.ndarray]:
        n = min(len(r["epochs"]) for r in g.runs)
        acc = np.array([[e["test_accuracy"] for e in r["epochs"][:n]] for r in g.runs], dtype=float)
        return np.arange(1, n + 1), 100 * acc.mean(axis=0)

    for n, (ax, (label, gs)) in enumerate(zip(axes.flat, panels)):
        for g in gs:
            ax.plot(*curve(g), marker=".", color=rank_color[g.rank], label=f"k = {g.rank}")
        for i, g in enumerate(dense):
            ax.plot(*curve(g), color="black", ls=["--", "-.", ":"][i % 3], label=g.series())
        _ceiling(ax, ceiling)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        if n % ncols == 0:  # the y axis is shared along a row
            ax.set_ylabel("test accuracy (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: learning curves (test accuracy after each epoch, mean over seeds)")
    return _finish(fig, axes.flat[0], path, legend_cols=len(ranks) + len(dense) + 1)


def draw_all(groups: list[Group], fig_dir: Path, ceiling: float | None, title: str) -> list[Path]:
    """Every figure into fig_dir; returns their paths."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    return [
        accuracy_vs_rank(groups, fig_dir / "accuracy_vs_rank.png", ceiling, title),
        frontier(groups, fig_dir / "memory_frontier.png", ceiling, title),
        pulses_and_ops(groups, fig_dir / "pulses_ops_per_epoch.png", title),
        learning_curves(groups, fig_dir / "learning_curves.png", ceiling, title),
    ]
