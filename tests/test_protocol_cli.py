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
