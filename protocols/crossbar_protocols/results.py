"""Writing and reading a protocol run directory.

``DIR/result.h5`` (HDF5): file attributes ``format``, ``protocol``, ``params``, ``summary``, ``units``,
``config`` (the resolved run config as JSON, and ``config_toml`` as TOML), ``rig`` (``backend.describe()``),
``versions`` (Python and package versions), ``created`` (UTC, ISO 8601), all JSON text (variable-length
strings, kept in the global heap, so long summaries fit); datasets ``cells``
((n, 3) tile/row/col), ``table/<column>`` and ``arrays/<name>``, each with a ``units`` attribute.
``DIR/data.csv``: the table (header = column names, which carry their unit). ``DIR/summary.json``: summary,
params and rig for a quick look. Plots (PNG) are written by :mod:`crossbar_protocols.plots`.
"""
from __future__ import annotations

import csv
import json
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from crossbar_protocols.base import ProtocolResult

FORMAT = "crossbar_protocols.result"
FORMAT_VERSION = 1
H5_NAME = "result.h5"
CSV_NAME = "data.csv"
SUMMARY_NAME = "summary.json"
PACKAGES = ("crossbar-ctl", "numpy", "numba", "h5py", "pydantic", "matplotlib", "tqdm")


def package_versions() -> dict[str, str]:
    """Python and the versions of the packages a result depends on."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def to_json(obj: Any, indent: int | None = None) -> str:
    return json.dumps(obj, default=_default, indent=indent, allow_nan=True)


def write_result(result: ProtocolResult, out_dir: str | Path) -> Path:
    """Write ``result.h5``, ``data.csv`` and ``summary.json`` into ``out_dir`` (created); returns the dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(result.meta)
    meta.setdefault("versions", package_versions())
    meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    with h5py.File(out / H5_NAME, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["protocol"] = result.protocol
        texts = {"params": to_json(result.params), "summary": to_json(result.summary),
                 "units": to_json(result.units)}
        texts.update({k: v if isinstance(v, str) else to_json(v) for k, v in meta.items()})
        for key, text in texts.items():
            f.attrs[key] = text
        f.create_dataset("cells", data=result.cells)
        tab = f.create_group("table")
        for name, col in result.table.items():
            ds = tab.create_dataset(name, data=np.asarray(col), compression="gzip", compression_opts=4)
            ds.attrs["units"] = result.units.get(name, "")
        arr = f.create_group("arrays")
        for name, a in result.arrays.items():
            ds = arr.create_dataset(name, data=np.asarray(a))
            ds.attrs["units"] = result.units.get(name, _unit_of(name))
    write_csv(result, out / CSV_NAME)
    (out / SUMMARY_NAME).write_text(to_json({"protocol": result.protocol, "summary": result.summary,
                                             "params": result.params, "rig": meta.get("rig")}, indent=2) + "\n")
    return out


def _unit_of(name: str) -> str:
    for suffix, unit in (("_S", "S"), ("_V", "V"), ("_A", "A"), ("_s", "s")):
        if name.endswith(suffix):
            return unit
    return ""


def write_csv(result: ProtocolResult, path: str | Path) -> None:
    """The table as CSV: one header row of column names, then one row per measurement (floats as repr)."""
    names = list(result.table)
    cols = [np.asarray(result.table[n]) for n in names]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        for row in zip(*(c.tolist() for c in cols)):
            w.writerow(row)


def read_result(path: str | Path) -> ProtocolResult:
    """A :class:`ProtocolResult` back from a run directory (or its ``result.h5``)."""
    p = Path(path)
    h5 = p / H5_NAME if p.is_dir() else p
    if not h5.is_file():
        raise FileNotFoundError(f"{path}: no {H5_NAME} here")
    with h5py.File(h5, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{h5}: not a crossbar_protocols result file")
        attrs = {k: f.attrs[k] for k in f.attrs}
        table = {k: f["table"][k][()] for k in f["table"]}
        arrays = {k: f["arrays"][k][()] for k in f["arrays"]}
        cells = f["cells"][()]
    skip = {"format", "format_version", "protocol", "params", "summary", "units"}
    meta: dict[str, Any] = {}
    for k, v in attrs.items():
        if k in skip:
            continue
        text = v.decode() if isinstance(v, bytes) else v
        try:
            meta[k] = json.loads(text) if isinstance(text, str) and k != "config_toml" else text
        except json.JSONDecodeError:
            meta[k] = text
    return ProtocolResult(str(attrs["protocol"]), json.loads(attrs["params"]), cells, table,
                          json.loads(attrs["units"]), arrays, json.loads(attrs["summary"]), meta)
