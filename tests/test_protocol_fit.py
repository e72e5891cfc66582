"""Fitting neurosim-exp to ltp-ltd data: round trip on simulated agsi devices, fit quality, the [device] TOML.

Round trip (what is measured): 1024 simulated agsi devices (a 32 x 32 tile, parallel mode: one program and one
read_conductance per step), 3 cycles of 120 potentiating + 120 depressing single pulses, d2d spread of Gmin
(10 %) and Gmax (5 %). The fitted population Gmin, Gmax (means over cells), A_p, A_d must be within 5 % of the
preset, σ_c2c within 20 %, and the d2d spreads of Gmin/Gmax within 20 % of the configured ones. A shape spread
of 15 % over 512 devices is recovered within 25 %; none is reported where none was configured. The c2c noise of
agsi (3.5 % of the window per pulse) exceeds the mean step (about 1–2 % of the window), so A_p's statistical
error with 8 cells x 3 cycles is ~10 %; many cells are needed for 5 % (see the 8-cell test, which checks the
reported standard errors instead).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from crossbar_ctl.config import config_from_dict, load_config
from crossbar_protocols import make_protocol, run_protocol
from crossbar_protocols.fit import FitError, fit_result, write_fit

AGSI = {"g_min_S": 3.0769e-9, "g_max_S": 38.462e-9, "a_ltp": 0.499181 * 97, "a_ltd": 0.200303 * 100,
        "pmax_ltp": 97.0, "pmax_ltd": 100.0, "sigma_c2c": 0.035}


def ltp_ltd(device: dict, rows: int, cols: int, mode: str, seed: int = 0, cycles: int = 3):
    cfg = config_from_dict({"seed": seed, "array": {"tiles": 1, "rows": rows, "cols": cols},
                            "device": {"preset": "agsi", **device}})
    proto = make_protocol("ltp-ltd", {"mode": mode, "cycles": cycles, "pulses_ltp": 120, "pulses_ltd": 120})
    return run_protocol(proto, cfg, "0:*:*")


def test_round_trip_recovers_agsi_from_1024_devices(tmp_path: Path) -> None:
    res = ltp_ltd({"sigma_d2d_g_min": 0.10, "sigma_d2d_g_max": 0.05}, 32, 32, "parallel")
    rep = fit_result(res)
    d = rep.device
    for key in ("g_min_S", "g_max_S", "a_ltp", "a_ltd"):
        assert d[key] == pytest.approx(AGSI[key], rel=0.05), key
    assert d["sigma_c2c"] == pytest.approx(AGSI["sigma_c2c"], rel=0.20)
    assert d["pmax_ltp"] == pytest.approx(97, rel=0.05)
    assert d["sigma_d2d_g_min"] == pytest.approx(0.10, rel=0.2)
    assert d["sigma_d2d_g_max"] == pytest.approx(0.05, rel=0.2)
    assert d["stuck_at_min_fraction"] == d["stuck_at_max_fraction"] == 0.0
    q = rep.quality
    assert q["cells_fitted"] == 1024 and q["r2_mean_curve"] > 0.999 and q["r2_one_step"] > 0.95
    assert q["standardised_residual_std"] == pytest.approx(1.0, abs=0.1)
    # the [device] TOML loads as a run config (what `crossbar-ctl train --config` reads)
    files = write_fit(rep, tmp_path / "device.toml", tmp_path)
    cfg = load_config(tmp_path / "device.toml")
    assert cfg.device.model == "neurosim-exp"
    assert cfg.device.a_ltp == pytest.approx(d["a_ltp"]) and cfg.device.v_ref_V == 2.0
    assert {f.name for f in files} == {"device.toml", "fit.json", "fit.png"}


def test_shape_spread_is_recovered_when_resolvable_and_zero_when_absent() -> None:
    rep = fit_result(ltp_ltd({"sigma_d2d_shape": 0.15}, 16, 32, "parallel"))
    assert rep.d2d["shape_resolved"] and rep.device["sigma_d2d_shape"] == pytest.approx(0.15, rel=0.25)
    assert rep.device["a_ltp"] == pytest.approx(AGSI["a_ltp"], rel=0.05)
    rep0 = fit_result(ltp_ltd({}, 16, 32, "parallel", seed=1))
    assert not rep0.d2d["shape_resolved"] and rep0.device["sigma_d2d_shape"] == 0.0
    assert any("shape spread not resolved" in n for n in rep0.notes)


def test_noise_free_devices_are_recovered_exactly() -> None:
    rep = fit_result(ltp_ltd({"sigma_c2c": 0.0}, 1, 8, "cell", cycles=3))
    for key in ("g_min_S", "g_max_S", "a_ltp", "a_ltd", "pmax_ltp", "pmax_ltd"):
        assert rep.device[key] == pytest.approx(AGSI[key], rel=1e-6), key
    assert rep.device["sigma_c2c"] == 0.0


def test_eight_cells_three_cycles_errors_are_within_the_reported_standard_errors() -> None:
    res = ltp_ltd({}, 1, 8, "cell", seed=1)
    rep = fit_result(res)
    for key in ("a_ltp", "a_ltd"):
        assert abs(rep.device[key] - AGSI[key]) < 4 * rep.stderr[key], key
        assert rep.stderr[key] < 0.3 * AGSI[key]
    assert rep.device["g_min_S"] == pytest.approx(AGSI["g_min_S"], rel=1e-9)  # clipped devices read the bound
    assert rep.device["g_max_S"] == pytest.approx(AGSI["g_max_S"], rel=1e-9)
    assert rep.device["sigma_c2c"] == pytest.approx(0.035, rel=0.2)


def test_stuck_cells_are_excluded_and_counted() -> None:
    res = ltp_ltd({"stuck_at_min_fraction": 0.2, "stuck_at_max_fraction": 0.1}, 4, 8, "parallel", seed=3)
    rep = fit_result(res)
    n_stuck = rep.quality["cells_stuck"]
    assert n_stuck > 0 and rep.quality["cells_fitted"] == 32 - n_stuck
    assert rep.device["stuck_at_min_fraction"] + rep.device["stuck_at_max_fraction"] == pytest.approx(n_stuck / 32)
    assert rep.device["stuck_at_min_fraction"] > rep.device["stuck_at_max_fraction"] > 0


def test_fit_refuses_data_it_cannot_fit() -> None:
    cfg = config_from_dict({"array": {"tiles": 1, "rows": 1, "cols": 2}})
    flat = run_protocol(make_protocol("ltp-ltd", {"v_set_V": 1.0, "v_reset_V": -1.0, "pulses_ltp": 5,
                                                  "pulses_ltd": 5}), cfg, "0:0:0-1")
    with pytest.raises(FitError, match="threshold"):
        fit_result(flat)
    iv = run_protocol(make_protocol("iv-sweep", {"step_V": 0.5}), cfg, "0:0:0")
    with pytest.raises(FitError, match="ltp-ltd"):
        fit_result(iv)
    with pytest.raises(FitError, match="unknown model"):
        fit_result(flat, model="no-such-model")


def test_fit_round_trip_study_pipeline_on_tiny_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """studies/fit_round_trip.py end to end: 128 devices, then 1 epoch of MBGD on 256 images per device."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "studies" / "fit_round_trip.py"
    spec = importlib.util.spec_from_file_location("fit_round_trip", path)
    assert spec is not None and spec.loader is not None
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    out = tmp_path / "rt"
    assert study.main(["--out", str(out), "--rows", "8", "--cols", "16", "--seeds", "0", "--epochs", "1",
                       "--train-set", "training.limit_train=256", "--train-set", "training.limit_test=200",
                       "--train-set", "training.hidden=[16]"]) == 0
    printed = capsys.readouterr().out
    assert "fitted − true" in printed and "a_ltp" in printed
    s = json.loads((out / "summary.json").read_text())
    assert s["characterisation"]["cells"] == 128 and s["fit"]["quality"]["cells_fitted"] == 128
    params = {p["parameter"]: p for p in s["parameters"]}
    for key, rel in (("g_min_S", 1e-6), ("g_max_S", 1e-6), ("a_ltp", 0.10), ("a_ltd", 0.10), ("sigma_c2c", 0.15)):
        assert params[key]["true"] == pytest.approx(AGSI[key])
        assert params[key]["fitted"] == pytest.approx(AGSI[key], rel=rel), key
        assert params[key]["rel_error"] == pytest.approx(params[key]["fitted"] / AGSI[key] - 1, abs=1e-12)
    assert params["sigma_d2d_g_min"]["true"] == 0 and params["sigma_d2d_g_min"]["rel_error"] is None
    t = s["training"]
    assert t["seeds"] == [0] and len(t["accuracy_fitted"]) == len(t["accuracy_true"]) == 1
    assert 0.1 < t["accuracy_fitted"][0] <= 1 and 0.1 < t["accuracy_true"][0] <= 1  # above chance after 1 epoch
    assert t["difference_points"] == pytest.approx(100 * (t["accuracy_fitted"][0] - t["accuracy_true"][0]))
    assert t["within_1_point"] == (abs(t["difference_points"]) <= 1.0)
    assert load_config(out / "device.toml").device.a_ltp == pytest.approx(params["a_ltp"]["fitted"])
    for kind in ("fitted", "true"):
        res = json.loads((out / "train" / kind / "s0" / "results.json").read_text())
        assert res["final_test_accuracy"] == pytest.approx(t[f"accuracy_{kind}"][0])
    assert json.loads((out / "train" / "true" / "s0" / "results.json").read_text())["config"]["device"][
        "a_ltp"] == pytest.approx(AGSI["a_ltp"])
