"""Run-config validation: every section, and errors that name the file, the key path and the value."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from crossbar_ctl.backend import available_backends, connect
from crossbar_ctl.config import RunConfig, default_toml, dump_toml, load_config
from crossbar_ctl.devices import IdealDevice, NeuroSimExpDevice, SoftBoundsDevice, LinearStepDevice
from crossbar_ctl.errors import BackendError, ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.toml"
    p.write_text(text)
    return p


def test_defaults_are_the_agsi_mlp_run() -> None:
    cfg = load_config()
    assert cfg.backend.kind == "sim"
    assert cfg.array.shapes() == [(785, 200), (101, 20)]
    assert isinstance(cfg.device, NeuroSimExpDevice) and cfg.device.preset == "agsi"
    assert cfg.training.method == "mbgd" and cfg.training.batch_size == 64


def test_every_section_validates(tmp_path: Path) -> None:
    p = write(tmp_path, """
seed = 7
[backend]
kind = "sim"
timeout_s = 2.5
[array]
tiles = 3
rows = 16
cols = 8
[device]
model = "soft-bounds"
levels = 50
up_down = 0.1
[read]
v_read_V = 0.1
read_noise = 0.02
dac_bits = 8
adc_bits = 10
[pulse]
v_set_V = 1.8
v_reset_V = -1.9
width_s = 2e-6
[limits]
max_voltage_V = 2.5
max_pulse_width_s = 1e-4
max_pulses_per_device = 50
compliance_current_A = 1e-3
[training]
method = "nmf"
rank = 3
mode = "rank-sum"
epochs = 2
[logging]
level = "debug"
""")
    cfg = load_config(p)
    assert cfg.seed == 7 and cfg.backend.timeout_s == 2.5
    assert cfg.array.shapes() == [(16, 8)] * 3
    assert isinstance(cfg.device, SoftBoundsDevice) and cfg.device.levels == 50
    assert cfg.read.dac_bits == 8 and cfg.pulse.v_reset_V == -1.9
    assert cfg.limits.max_pulses_per_device == 50
    assert cfg.training.method == "nmf" and cfg.training.mode == "rank-sum"
    assert cfg.logging.level == "debug"


def test_preset_expands_and_keys_override(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[device]\npreset = "agsi"\nsigma_c2c = 0.0\n'))
    d = cfg.device
    assert isinstance(d, NeuroSimExpDevice)
    assert d.sigma_c2c == 0.0
    assert d.g_min_S == pytest.approx(3.0769e-9, rel=1e-12, abs=0) and d.g_max_S == pytest.approx(38.462e-9, rel=1e-12, abs=0)
    assert d.pmax_ltp == 97 and d.pmax_ltd == 100
    assert d.a_ltp == pytest.approx(0.499181 * 97) and d.a_ltd == pytest.approx(0.200303 * 100)
    text = dump_toml(cfg)
    assert "a_ltp" in text and 'preset = "agsi"' in text


@pytest.mark.parametrize("text, needle", [
    ("[device]\nmodel = \"ideal\"\nlevels = \"many\"\n", "[device].levels"),
    ("[array]\nrows = [10, 20, 30]\n", "[array]"),
    ("[limits]\nmax_voltage_V = -1\n", "[limits].max_voltage_V"),
    ("[read]\nread_noise = 2.0\n", "[read].read_noise"),
    ("[training]\nmethod = \"adam\"\n", "[training].method"),
    ("[training]\nlearnign_rate = 0.1\n", "[training].learnign_rate"),
    ("[bogus]\nx = 1\n", "bogus"),
    ("[device]\nmodel = \"neurosim-exp\"\ng_min_S = 5e-8\ng_max_S = 1e-8\n", "g_max_S"),
    ("[pulse]\nv_set_V = 5.0\n", "max_voltage_V"),
    ("[device]\npreset = \"nosuch\"\n", "nosuch"),
    ("[device]\nmodel = \"memristor9000\"\n", "[device]"),
])
def test_bad_values_name_the_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert str(p) in msg
    assert needle in msg


def test_unknown_key_is_reported_as_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[training\]\.learnign_rate: unknown key"):
        load_config(write(tmp_path, "[training]\nlearnign_rate = 0.1\n"))


def test_malformed_toml_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "[training]\nepochs = = 3\n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        load_config(p)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("/nonexistent/run.toml")


def test_overrides_parse_toml_values() -> None:
    cfg = load_config(None, ["training.epochs=3", "training.method=nmf", "read.read_noise=0.01",
                             "training.hidden=[50, 20]"])
    assert cfg.training.epochs == 3 and cfg.training.method == "nmf"
    assert math.isclose(cfg.read.read_noise, 0.01) and cfg.training.hidden == [50, 20]
    with pytest.raises(ConfigError, match="--set"):
        load_config(None, ["training.epochs"])
    with pytest.raises(ConfigError, match=r"\[training\]\.epochs"):
        load_config(None, ["training.epochs=0"])


def test_show_defaults_is_complete_and_loads_back(tmp_path: Path) -> None:
    text = default_toml()
    for section in ("[backend]", "[array]", "[device]", "[read]", "[pulse]", "[limits]", "[training]", "[logging]"):
        assert section in text
    # every key carries a comment
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            assert "  # " in line, line
    cfg = load_config(write(tmp_path, text))
    assert cfg == RunConfig()


@pytest.mark.parametrize("cls", [IdealDevice, NeuroSimExpDevice, SoftBoundsDevice, LinearStepDevice])
def test_each_model_has_levels_and_a_documented_equation(cls: type) -> None:
    dev = cls()
    up, down = dev.levels_up_down()
    assert up > 1 and down > 1
    assert dev.mean_step_S() == pytest.approx(0.5 * dev.g_range_S * (1 / up + 1 / down), rel=1e-12, abs=0)
    assert "=" in (cls.__doc__ or "")


def test_connect_unknown_kind_lists_installed() -> None:
    with pytest.raises(BackendError) as info:
        connect({"backend": {"kind": "nosuch"}})
    assert "nosuch" in str(info.value)
    assert "sim" in str(info.value)
    assert "sim" in available_backends()
