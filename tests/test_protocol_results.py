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
