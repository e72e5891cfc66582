"""``train --dry-run``: validation without opening the backend, operation counts that bound a real run."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from crossbar_ctl.cli import main
from crossbar_ctl.config import load_config
from crossbar_ctl.dryrun import DEFAULT_OP_TIME_S, dry_run
from crossbar_ctl.oplog import read_log
from crossbar_ctl.training.trainer import Trainer
from tests.hil_common import TINY, METHODS, tiny


def test_default_run_is_valid_and_estimated() -> None:
    d = dry_run(load_config(None, []))
    assert d.ok, d.errors
    o = d.info["operations"]
    assert o["batches_per_epoch"] == 157  # 10,000 samples / 64
    assert o["per_epoch"]["read_vmm"] == 157 * 2 + 10 * 2 and o["per_epoch"]["read_vmm_t"] == 157
    assert o["per_epoch"]["program"] == 157 * 2 and o["per_epoch"]["outer_pulse"] == 0  # mbgd
    du = d.info["duration"]
    expected = sum(n * DEFAULT_OP_TIME_S[k] for k, n in o["per_epoch"].items())
    assert du["epoch_s"] == pytest.approx(expected) and du["run_s"] > 10 * du["epoch_s"]
    assert du["serial_line_s_per_epoch"] == 0.0
    # forward and test reads: 4 bytes x (rows + cols) per sample and layer; transpose reads of layer 1; programs
    wire = 4 * 20000 * (985 + 121) + 4 * 10000 * 121 + 157 * 2 * (785 * 200 + 101 * 20)
    assert o["wire_bytes_per_epoch"] == wire
    serial = dry_run(load_config(None, ['backend.kind="serial"', 'backend.address="/dev/ttyS9"', "backend.baud=9600"]))
    assert serial.info["duration"]["serial_line_s_per_epoch"] == pytest.approx(wire * 10 / 9600)
    master, slave = os.openpty()  # a pseudo-terminal (the emulated tester's link) has no line rate
    try:
        pty = dry_run(load_config(None, ['backend.kind="serial"', f'backend.address="{os.ttyname(slave)}"',
                                         "backend.baud=9600"]))
    finally:
        os.close(master)
        os.close(slave)
    assert pty.info["duration"]["serial_line_s_per_epoch"] == 0.0
    v = d.info["limits"]["voltages_V"]
    assert (v["read_V"], v["set_V"], v["reset_V"], v["half_select_V"]) == (0.2, 2.0, -2.0, 1.0)


@pytest.mark.parametrize("sets, message", [
    (["array.cols=[100, 20]"], "needs 785 x 200 devices"),
    (["array.tiles=1", "array.rows=785", "array.cols=200"], "2 layers need 2 tiles"),
    (["limits.compliance_current_A=1e-6"], "compliance_current_A"),
    (['training.method="streaming-pca"', "training.outer_slots=2000"], "outer_slots = 2000 exceeds"),
    (["limits.max_pulses_per_device=20"], "initial programming needs"),
    (['training.method="sgd"'], "batch_size = 1"),
    (['training.method="nmf"', "training.rank=30", "training.hidden=[8]"], "rank 30 exceeds"),
    (['backend.kind="nosuch"'], "unknown backend kind"),
    (['backend.kind="visa"'], "needs an address"),
    (['training.data_dir="/nonexistent/mnist"'], "data set"),
])
def test_errors_name_the_problem(sets: list[str], message: str) -> None:
    d = dry_run(load_config(None, sets))
    assert not d.ok and any(message in e for e in d.errors), d.errors


@pytest.mark.parametrize("method", sorted(METHODS))
def test_counts_bound_a_real_run_and_reads_are_exact(method: str, tmp_path: Path) -> None:
    cfg = tiny(method=method)
    d = dry_run(cfg)
    assert d.ok, d.errors
    Trainer(cfg, tmp_path, progress=False).run()
    kinds = read_log(tmp_path / "oplog.h5")["kind"]
    o = d.info["operations"]
    init = o["initial_programming"]
    real = {k: kinds.count(k) for k in set(kinds)}
    assert real.pop("read_vmm") == o["per_epoch"]["read_vmm"]
    assert real.pop("read_vmm_t") == o["per_epoch"]["read_vmm_t"]
    assert real.pop("read_conductance") <= init["read_conductance"]
    assert real.pop("program") <= o["per_epoch"]["program"] + init["program"]
    assert real.pop("outer_pulse", 0) <= o["per_epoch"]["outer_pulse"]
    assert not real


def test_cli_dry_run_never_opens_the_backend(capsys) -> None:
    with socket.socket() as s:  # a port nobody listens on: connecting would fail
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["train", "--dry-run", *[f"--set={x}" for x in TINY], "--set", 'backend.kind="visa"',
                 "--set", f'backend.address="TCPIP::127.0.0.1::{port}::SOCKET"', "--op-time", "read_vmm=0.01"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(not opened)" in out and "dry run OK: nothing was sent to the array" in out
    assert "read_vmm 0.01 s" in out and "peak voltages: read 0.2 V, set 2 V, reset -2 V" in out
    code = main(["train", "--dry-run", "--json", "--set", "array.cols=[10, 20]"])
    report = json.loads(capsys.readouterr().out)
    assert code == 2 and not report["ok"] and report["layers"][0]["fits"] is False
    assert main(["train", "--dry-run", "--op-time", "read_vmm"]) == 2


def test_smu_matrix_estimate_counts_the_off_time_between_pulses() -> None:
    """On the smu-matrix rig every device of a composed pulse operation gets a train of outer_slots pulses, one
    every width + pulse_off_s: the dry run's per-operation time grows by that much per device."""
    rig = str(Path(__file__).resolve().parents[1] / "hil" / "configs" / "emulated-smu-matrix.toml")
    est = {}
    for off in (1e-4, 1e-3):
        cfg = load_config(rig, [f"smu_matrix.pulse_off_s={off}", "training.outer_slots=8", "pulse.width_s=1e-4",
                                "backend.timeout_s=30"])
        est[off] = dry_run(cfg).info["duration"]["op_time_s"]
    cells = max(r * c for r, c in cfg.array.shapes())
    assert est[1e-3]["outer_pulse"] - est[1e-4]["outer_pulse"] == pytest.approx(cells * 8 * 9e-4)
    assert est[1e-3]["read_vmm"] == est[1e-4]["read_vmm"]
