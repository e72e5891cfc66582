"""``crossbar-ctl protocol list|run|fit`` through an argparse parser built with add_protocol_parser."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from crossbar_ctl.config import load_config
from crossbar_ctl.errors import ConfigError, LimitError
from crossbar_protocols.cli import add_protocol_parser, split_sets

RIG = """seed = 4
[array]
tiles = 1
rows = 4
cols = 4
[device]
preset = "agsi"
"""


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crossbar-ctl")
    add_protocol_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["protocol", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("ltp-ltd", "iv-sweep", "retention", "endurance", "read-disturb", "array-map", "write-verify"):
        assert name in out
    assert cli(["protocol", "list", "iv-sweep"]) == 0
    assert "compliance_A" in capsys.readouterr().out


def test_run_then_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rig = tmp_path / "rig.toml"
    rig.write_text(RIG)
    out = tmp_path / "ltp"
    rc = cli(["protocol", "run", "ltp-ltd", "--config", str(rig), "--set", "cycles=3", "--set", "mode=parallel",
              "--set", "array.rows=2", "--set", "pulses_ltp=120", "--set", "pulses_ltd=120", "--cells", "0:*:*",
              "--out", str(out), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["summary"]["cells"] == 8  # array.rows=2 went to the config: 2 x 4 cells
    assert (out / "result.h5").is_file() and (out / "ltp_ltd.png").is_file()
    dev = tmp_path / "device.toml"
    assert cli(["protocol", "fit", str(out), "--model", "neurosim-exp", "--out", str(dev)]) == 0
    assert "fitted neurosim-exp" in capsys.readouterr().out
    cfg = load_config(dev)
    assert cfg.device.model == "neurosim-exp" and 1e-9 < cfg.device.g_min_S < cfg.device.g_max_S < 1e-7
    assert (out / "fit.png").is_file() and (out / "fit.json").is_file()


def test_dry_run_estimates_and_checks_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rig = tmp_path / "rig.toml"
    rig.write_text(RIG)
    assert cli(["protocol", "run", "retention", "-c", str(rig), "--set", "duration_s=3600", "-s", "interval_s=60",
                "--dry-run", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] and rep["estimate"]["wait_s"] == 3600 and rep["estimate"]["reads"] == 4 * 61
    assert not (tmp_path / "runs").exists()
    assert cli(["protocol", "run", "iv-sweep", "-c", str(rig), "--set", "v_max_V=4.0", "--dry-run"]) == 2
    assert "max_voltage_V" in capsys.readouterr().out
    with pytest.raises(LimitError):  # a real run refuses it too (the main CLI turns this into exit code 2)
        cli(["protocol", "run", "iv-sweep", "-c", str(rig), "--set", "v_max_V=4.0", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_set_splits_protocol_parameters_from_config_keys() -> None:
    params, config = split_sets(["cycles=5", "device.sigma_c2c=0", "mode=parallel", "seed=3", "v_set_V=2.5"])
    assert params == {"cycles": 5, "mode": "parallel", "v_set_V": 2.5}
    assert config == ["device.sigma_c2c=0", "seed=3"]
    with pytest.raises(ConfigError, match="not a run-config section"):
        split_sets(["pulse.x.y=1", "devcie.sigma_c2c=0"])


def test_dry_run_applies_the_half_select_check_of_the_real_run(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """2.6 V pulses half-select the other cells of row 0 at 1.3 V > 1.2 V: the dry run refuses what the run does."""
    from crossbar_ctl.cli import main

    rig = tmp_path / "rig.toml"
    rig.write_text(RIG)
    args = ["protocol", "run", "ltp-ltd", "-c", str(rig), "--set", "v_set_V=2.6", "--cells", "0:0:0-3"]
    assert cli(args + ["--dry-run"]) == 2
    out = capsys.readouterr().out
    assert "limits: pulses of 2.6 V half-select" in out and "[device].v_threshold_V" in out
    assert cli(args + ["--dry-run", "--json"]) == 2
    rep = json.loads(capsys.readouterr().out)
    assert not rep["ok"] and "half-select" in rep["limits"] and rep["estimate"]["pulses"] == 4 * 3 * 200
    assert main(args + ["--out", str(tmp_path / "run")]) == 2  # the real run: refused the same way
    assert "half-select" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert cli(args[:-4] + ["--cells", "0:0:0,0:1:1", "--dry-run"]) == 0  # distinct rows and columns: allowed
    assert "limits: ok" in capsys.readouterr().out


@pytest.mark.parametrize("sets,error", [
    (["v_set_V=2.6"], "half-select"),  # a check protocol.run applies
    (["mode=parallel", "v_read_V=0.3"], "parallel"),  # read-mode check
    (["v_set_V=2.9", "limits.max_voltage_V=2.5"], "max_voltage_V"),
])
def test_a_refused_run_opens_no_backend_and_creates_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            sets: list[str], error: str) -> None:
    import crossbar_protocols.runner as runner
    from crossbar_protocols import make_protocol, run_protocol
    from crossbar_protocols.cli import split_sets

    opened: list[object] = []
    real_connect = runner.connect
    monkeypatch.setattr(runner, "connect", lambda cfg: opened.append(cfg) or real_connect(cfg))
    rig = tmp_path / "rig.toml"
    rig.write_text(RIG)
    params, overrides = split_sets(sets)
    cfg = load_config(rig, overrides)
    assert cfg.logging.op_log  # a run that went through would write DIR/oplog.h5
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=error):  # ConfigError and LimitError are ValueErrors
        run_protocol(make_protocol("ltp-ltd", params), cfg, "0:0:0-3", out)
    assert opened == [] and not out.exists() and not (out / "oplog.h5").exists()
    # the same protocol on cells it may use runs and writes its op log (the check is not refusing everything)
    if error == "half-select":
        run_protocol(make_protocol("ltp-ltd", {**params, "pulses_ltp": 2, "pulses_ltd": 2, "cycles": 1}), cfg,
                     "0:0:0,0:1:1", out, plots=False)
        assert len(opened) == 1 and (out / "oplog.h5").is_file()
