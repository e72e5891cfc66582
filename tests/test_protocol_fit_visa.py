"""The characterise → fit round trip through the emulated instrument over VISA.

``ltp-ltd`` runs through :class:`crossbar_instruments.visa_backend.VisaBackend` against ``crossbar-ctl emulate``
(a child process serving the simulator over TCP, started by :func:`crossbar_instruments.launch.emulated_tester`),
and the same protocol runs in process on the SimBackend with the same seed. The transport is transparent: the
measured tables are bit-identical, hence so is every fitted number (neurosim-exp and tabular), and the recovered
parameters meet the in-process round trip's tolerances (tests/test_protocol_fit.py), since the data are the same.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from crossbar_ctl.backend import connect
from crossbar_ctl.config import RunConfig, config_from_dict, load_config
from crossbar_ctl.devices import NeuroSimExpDevice, expand_preset
from crossbar_ctl.training.trainer import Trainer
from crossbar_instruments.launch import emulated_tester, with_address
from crossbar_protocols import make_protocol, run_protocol
from crossbar_protocols.base import ProtocolResult
from crossbar_protocols.fit import fit_result

TINY = ["training.limit_train=256", "training.limit_test=128", "training.hidden=[16]", "training.epochs=1",
        "array.rows=[785, 17]", "array.cols=[32, 20]", "seed=3", "read.read_noise=0.02", "logging.progress=false"]
AGSI = {"g_min_S": 3.0769e-9, "g_max_S": 38.462e-9, "a_ltp": 0.499181 * 97, "a_ltd": 0.200303 * 100,
        "pmax_ltp": 97.0, "pmax_ltd": 100.0, "sigma_c2c": 0.035}


def config(rows: int, cols: int, seed: int, **device: float) -> RunConfig:
    return config_from_dict({"seed": seed, "array": {"tiles": 1, "rows": rows, "cols": cols},
                             "device": {"preset": "agsi", **device}})


def in_process_and_over_visa(cfg: RunConfig, mode: str) -> tuple[ProtocolResult, ProtocolResult]:
    proto = make_protocol("ltp-ltd", {"mode": mode, "cycles": 3, "pulses_ltp": 120, "pulses_ltd": 120})
    ref = run_protocol(proto, cfg, "0:*:*")
    with emulated_tester(cfg, "tcp") as emu:  # the tester's device under test: the simulator of the same config
        res = run_protocol(proto, with_address(cfg, "visa", emu.address), "0:*:*")
    assert "array left in its safe state" in emu.stderr
    assert ref.meta["rig"]["kind"] == "sim" and res.meta["rig"]["kind"] == "visa"
    for key in ("cell", "cycle", "pulse", "polarity", "G_S"):
        assert np.array_equal(res.table[key], ref.table[key]), key  # bit for bit through the transport
    return ref, res


def assert_same_fit(a: object, b: object) -> None:
    assert a.device == b.device and a.stderr == b.stderr  # type: ignore[attr-defined]
    assert a.quality == b.quality and a.notes == b.notes  # type: ignore[attr-defined]


def test_1024_devices_over_visa_recover_agsi_and_equal_the_in_process_fit() -> None:
    """32 × 32 devices in parallel mode (one program and one read_conductance per step over VISA, about 1.5 s),
    d2d spread of Gmin 10 % and Gmax 5 %: the in-process test's tolerances (Gmin, Gmax, A_p, A_d within 5 %,
    σ_c2c within 20 %, d2d spreads within 20 %), and the tabular table's μ within 4 of its standard errors of
    agsi's r(T − G) at every bin centre. Then a tiny training run on the fitted table gives bit-identical
    conductances in process and over VISA (the tester's simulator runs the tabular kernels)."""
    cfg = config(32, 32, 0, sigma_d2d_g_min=0.10, sigma_d2d_g_max=0.05)
    ref, res = in_process_and_over_visa(cfg, "parallel")
    rep, rep_ref = fit_result(res), fit_result(ref)
    assert_same_fit(rep, rep_ref)
    d = rep.device
    for key in ("g_min_S", "g_max_S", "a_ltp", "a_ltd", "pmax_ltp"):
        assert d[key] == pytest.approx(AGSI[key], rel=0.05), key
    assert d["sigma_c2c"] == pytest.approx(AGSI["sigma_c2c"], rel=0.20)
    assert d["sigma_d2d_g_min"] == pytest.approx(0.10, rel=0.2) and d["sigma_d2d_g_max"] == pytest.approx(0.05, rel=0.2)
    assert rep.quality["cells_fitted"] == 1024 and rep.quality["r2_mean_curve"] > 0.999

    tab, tab_ref = fit_result(res, "tabular"), fit_result(ref, "tabular")
    assert_same_fit(tab, tab_ref)
    dev = NeuroSimExpDevice(**{k: v for k, v in expand_preset({"preset": "agsi"}).items() if k != "model"})
    (tu, ru), (td, rd) = dev.nominal_maps()
    g = np.asarray(tab.device["g_grid_S"])
    for name, truth in (("up", ru * (tu - g)), ("down", rd * (td - g))):
        err = np.asarray(tab.device[f"dg_{name}_mean_S"]) - truth
        assert np.all(np.abs(err) < 4 * np.asarray(tab.stderr[f"dg_{name}_mean_S"])), name
    assert tab.device["sigma_d2d_g_min"] == pytest.approx(0.10, rel=0.2)
    loaded = config_from_dict({"device": tab.device}).device  # what `crossbar-ctl train` would load
    assert loaded.model == "tabular" and loaded.sigma_c2c == pytest.approx(0.035, rel=0.05)  # derived from σ

    # closing the loop: a tiny training run on the fitted table, in process and on the emulated tester over VISA
    data = load_config(None, TINY).model_dump()
    data["device"] = tab.device
    run = config_from_dict(data)
    sim = connect(run)
    ref_res = Trainer(run, None, backend=sim, progress=False).run()
    g_ref = [sim.true_conductance(t) for t in range(sim.n_tiles)]
    sim.close()
    with emulated_tester(run, "tcp") as emu:
        client = with_address(run, "visa", emu.address)
        visa_res = Trainer(client, None, progress=False).run()
        with connect(client) as b:
            g = [b.true_conductance(t) for t in range(b.n_tiles)]
    assert visa_res["final_test_accuracy"] == ref_res["final_test_accuracy"] > 0.1
    assert all(np.array_equal(a, b) for a, b in zip(g, g_ref))


def test_eight_cells_three_cycles_cell_by_cell_over_visa() -> None:
    """The issue's minimum, 8 cells × 3 cycles, one device per operation (pulse_cell / read_cell: about 11 600
    commands, 4 s). Eight cells cannot give 5 % on A_p: its standard error here is about 13 % (the c2c noise,
    3.5 % of the window, exceeds the mean step), so as in the in-process 8-cell test the errors must lie within
    4 reported standard errors, the errors be below 30 % of the value; Gmin and Gmax are read exactly (clipped
    devices read the bound), σ_c2c within 20 % (≈ 11 500 steps: its standard error is about 1 %)."""
    cfg = config(1, 8, 1)
    ref, res = in_process_and_over_visa(cfg, "cell")
    rep = fit_result(res)
    assert_same_fit(rep, fit_result(ref))
    for key in ("a_ltp", "a_ltd"):
        assert abs(rep.device[key] - AGSI[key]) < 4 * rep.stderr[key], key
        assert rep.stderr[key] < 0.3 * AGSI[key]
    assert rep.device["g_min_S"] == pytest.approx(AGSI["g_min_S"], rel=1e-9)
    assert rep.device["g_max_S"] == pytest.approx(AGSI["g_max_S"], rel=1e-9)
    assert rep.device["sigma_c2c"] == pytest.approx(0.035, rel=0.2)
    tab = fit_result(res, "tabular", bins=8)  # ≈ 700 steps per bin and polarity: 8 bins keep every bin fitted
    assert_same_fit(tab, fit_result(ref, "tabular", bins=8))
    assert tab.quality["interpolated_bins_up"] == [] and tab.quality["interpolated_bins_down"] == []
    sd = np.asarray(tab.device["dg_up_std_S"] + tab.device["dg_down_std_S"])
    se = np.asarray(tab.stderr["dg_up_std_S"] + tab.stderr["dg_down_std_S"])
    R = AGSI["g_max_S"] - AGSI["g_min_S"]
    assert np.all(np.abs(sd - 0.035 * R) < 4 * se)
    assert tab.quality["r2_mean_curve"] > 0.99 and math.isfinite(tab.quality["standardised_residual_std"])
