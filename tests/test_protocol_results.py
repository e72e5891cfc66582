"""Result directories: HDF5 with config/rig/params/versions, CSV export, op log, and every protocol's plots."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from crossbar_ctl.config import config_from_dict
from crossbar_protocols import make_protocol, read_result, run_protocol

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RIG = {"seed": 9, "array": {"tiles": 1, "rows": 4, "cols": 4},
       "device": {"preset": "agsi", "stuck_at_min_fraction": 0.1, "stuck_at_max_fraction": 0.1}}


def test_result_directory_round_trip(tmp_path: Path) -> None:
    cfg = config_from_dict(RIG)
    proto = make_protocol("ltp-ltd", {"pulses_ltp": 8, "pulses_ltd": 6, "cycles": 2})
    res = run_protocol(proto, cfg, "0:0:0-2", tmp_path / "run")
    d = tmp_path / "run"
    assert {"result.h5", "data.csv", "summary.json", "ltp_ltd.png", "oplog.h5"} <= {p.name for p in d.iterdir()}
    back = read_result(d)
    assert back.protocol == "ltp-ltd" and back.params == res.params and back.summary == res.summary
    for k, col in res.table.items():
        np.testing.assert_array_equal(back.table[k], col)
    np.testing.assert_array_equal(back.cells, [[0, 0, 0], [0, 0, 1], [0, 0, 2]])
    assert back.meta["rig"]["kind"] == "sim" and back.meta["rig"]["preset"] == "agsi"
    assert back.meta["config"]["device"]["stuck_at_min_fraction"] == 0.1
    assert tomllib.loads(back.meta["config_toml"])["seed"] == 9
    assert {"python", "numpy", "h5py", "crossbar-ctl", "matplotlib"} <= set(back.meta["versions"])
    with h5py.File(d / "result.h5") as f:
        assert f["table/G_S"].attrs["units"] == "S" and f["table/pulse"].attrs["units"] == "pulse #"
        assert json.loads(f.attrs["params"])["pulses_ltp"] == 8
    with open(d / "data.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == list(res.table)
    assert len(rows) - 1 == len(res.table["G_S"]) == 3 * 2 * 15
    np.testing.assert_array_equal([float(r[rows[0].index("G_S")]) for r in rows[1:]], res.table["G_S"])
    with h5py.File(d / "oplog.h5") as f:  # every operation of the run is in the op log
        assert int(np.count_nonzero(f["ops"]["seq"] > 0)) == sum(proto.estimate(res.cells)["ops"].values())


PLOTS = [
    ("ltp-ltd", {"pulses_ltp": 30, "pulses_ltd": 30, "cycles": 2}, "0:0:0-3", ["ltp_ltd.png"]),
    ("iv-sweep", {"step_V": 0.05}, "0:0:0", ["iv.png"]),
    ("retention", {"duration_s": 100, "interval_s": 10}, "0:0:0-3", ["retention.png"]),
    ("read-disturb", {"reads": 50, "v_read_V": 1.3}, "0:0:0-1", ["read_disturb.png"]),
    ("endurance", {"cycles": 8}, "0:0:0-3", ["endurance.png"]),
    ("array-map", {"repeats": 1}, "0:*:*", ["array_map_t0.png"]),
    ("write-verify", {"max_pulses": 300}, "0:*:*", ["write_verify.png"]),
]


@pytest.mark.parametrize("name,params,cells,files", PLOTS)
def test_every_protocol_writes_its_plots(tmp_path: Path, name: str, params: dict[str, Any], cells: str,
                                         files: list[str]) -> None:
    res = run_protocol(make_protocol(name, params), config_from_dict(RIG), cells, tmp_path)
    assert res.meta["plots"] == files
    for f in files:
        data = (tmp_path / f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every matplotlib Figure the plot modules make, drawn, for inspecting what is on it."""
    import crossbar_protocols.fit_plot as fit_plot
    import crossbar_protocols.plots as plots

    made: list[Any] = []
    real = plots._figure

    def recording(*args: Any, **kw: Any) -> Any:
        fig, axes = real(*args, **kw)
        made.append(fig)
        return fig, axes

    monkeypatch.setattr(plots, "_figure", recording)
    monkeypatch.setattr(fit_plot, "_figure", recording)
    return made


def _legends_clear_of_data(fig: Any) -> None:
    """No legend overlaps the plotting area of an axes that shows data (axes with axis off hold text)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends
    for leg in legends:
        box = leg.get_window_extent(r)
        for ax in fig.axes:
            if ax.axison:
                assert not box.overlaps(ax.get_window_extent(r)), (leg.get_texts()[0].get_text(), ax.get_title())
            for text in ax.texts:
                assert not box.overlaps(text.get_window_extent(r))


@pytest.mark.parametrize("name,params,cells", [
    ("ltp-ltd", {"pulses_ltp": 30, "pulses_ltd": 30, "cycles": 2}, "0:0:0-3"),
    ("endurance", {"cycles": 8}, "0:0:0-3"),
    ("iv-sweep", {"step_V": 0.05}, "0:0:0"),
])
def test_legends_do_not_cover_data(tmp_path: Path, figures: list[Any], name: str, params: dict[str, Any],
                                   cells: str) -> None:
    run_protocol(make_protocol(name, params), config_from_dict(RIG), cells, tmp_path)
    assert len(figures) == 1
    _legends_clear_of_data(figures[0])


def test_fit_plot_legend_sits_off_the_data(tmp_path: Path, figures: list[Any]) -> None:
    from crossbar_protocols.fit import fit_result, write_fit

    cfg = config_from_dict({"seed": 2, "array": {"tiles": 1, "rows": 4, "cols": 4}, "device": {"preset": "agsi"}})
    res = run_protocol(make_protocol("ltp-ltd", {"pulses_ltp": 60, "pulses_ltd": 60, "cycles": 2,
                                                 "mode": "parallel"}), cfg, "0:*:*", tmp_path, plots=False)
    write_fit(fit_result(res), tmp_path / "device.toml", tmp_path)
    (fig,) = figures
    _legends_clear_of_data(fig)
    assert fig.axes[0].get_legend() is None and fig.axes[1].get_legend() is not None


def test_iv_plot_is_in_nanoamperes_with_readable_log_ticks_and_marks_compliance(tmp_path: Path,
                                                                                figures: list[Any]) -> None:
    cfg = config_from_dict({"seed": 1, "array": {"tiles": 1, "rows": 1, "cols": 1},
                            "device": {"preset": "agsi", "sigma_c2c": 0.0}})
    res = run_protocol(make_protocol("iv-sweep", {"step_V": 0.05, "compliance_A": 2e-8}), cfg, "0:0:0", tmp_path)
    (fig,) = figures
    fig.canvas.draw()
    lin, log = fig.axes
    assert "(nA)" in lin.get_ylabel() and "(nA)" in log.get_ylabel() and log.get_yscale() == "log"
    lo, hi = log.get_ylim()
    labels = [t.get_text() for t in log.get_yticklabels() if lo <= t.get_position()[1] <= hi and t.get_text()]
    assert len(labels) >= 5 and all(float(s) > 0 for s in labels)  # plain numbers, e.g. 0.1 0.2 0.5 1 2 5 10
    np.testing.assert_allclose(max(np.abs(line.get_ydata()).max() for line in lin.get_lines()[:4]),
                               np.abs(res.table["i_A"]).max() * 1e9, rtol=1e-12)  # nA on the linear panel
    rings = [line for line in lin.get_lines() if line.get_marker() == "o"]
    assert len(rings) == 1 and len(rings[0].get_xdata()) == res.summary["compliance_hits"] > 0


def test_write_verify_histogram_shows_the_successful_cells_within_three_tolerances(tmp_path: Path,
                                                                                    figures: list[Any]) -> None:
    res = run_protocol(make_protocol("write-verify", {"max_pulses": 300}), config_from_dict(RIG), "0:*:*",
                       tmp_path)
    ok = res.table["success"] == 1
    n_fail = int(np.count_nonzero(~ok))
    assert n_fail > 0 and ok.sum() > 0  # stuck devices fail
    (fig,) = figures
    hist = fig.axes[1]
    tol_nS = 0.5  # the default tolerance_S, 0.5 nS
    assert hist.get_xlim() == pytest.approx((-3 * tol_nS, 3 * tol_nS))
    assert sum(p.get_height() for p in hist.patches) == ok.sum()  # every successful cell, no failed one
    assert [line.get_xdata()[0] for line in hist.get_lines()] == pytest.approx([-tol_nS, tol_nS])
    assert f"{n_fail} failed" in hist.get_title()
