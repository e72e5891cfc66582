"""``crossbar-ctl report DIR``: aggregate a sweep directory into summary.csv and PNG figures.

One summary row per point config without the seed (a "group"): mean and sample std (ddof = 1; empty for one
seed) over seeds of the final test accuracy, the layer-1 gradient memory (floats), training device pulses and
array operations. Figures (matplotlib, Agg): accuracy vs rank, the memory/accuracy frontier, pulses and
operations per epoch vs rank, and learning curves. Dense methods (mbgd, sgd) have no rank: they are drawn as
reference lines.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossbar_ctl.errors import ConfigError
from crossbar_ctl.sweeps.runner import MANIFEST, RESULTS_FILE

DENSE = ("mbgd", "sgd")
METRICS = {  # summary column stem -> how to read it from results.json
    "final_test_accuracy": lambda r: r["final_test_accuracy"],
    "memory_floats_layer1": lambda r: r["memory_floats"][0],
    "device_pulses": lambda r: r["device_pulses"],
    "array_ops": lambda r: r["array_ops"],
}


@dataclass
class Group:
    """The complete runs of one point config over its seeds."""

    name: str
    overrides: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def training(self) -> dict[str, Any]:
        return self.runs[0]["config"]["training"]

    @property
    def method(self) -> str:
        return str(self.training["method"])

    @property
    def dense(self) -> bool:
        return self.method in DENSE

    @property
    def rank(self) -> int | None:
        return None if self.dense else int(self.training["rank"])

    def series(self, skip: tuple[str, ...] = ("training.rank",)) -> str:
        """Legend label: method and mode, plus any other override (except ``skip``) that distinguishes it."""
        label = self.method if self.dense else f"{self.method} {self.training['mode']}"
        extra = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.overrides.items()
                 if k not in skip and k not in ("training.method", "training.mode")]
        return " ".join([label, *extra])

    def values(self, metric: str) -> np.ndarray:
        return np.array([float(METRICS[metric](r)) for r in self.runs], dtype=float)

    def stat(self, metric: str) -> tuple[float, float]:
        v = self.values(metric)
        return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else math.nan)

    def per_epoch(self, metric: str) -> tuple[float, float]:
        v = self.values(metric) / np.array([len(r["epochs"]) for r in self.runs], dtype=float)
        return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else math.nan)


def load_groups(out: Path) -> tuple[dict[str, Any], list[Group], list[str]]:
    """(manifest, groups with at least one complete run, names of points without a complete run)."""
    path = out / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{out}: no {MANIFEST} here (is it a `crossbar-ctl sweep --out` directory?)")
    manifest = json.loads(path.read_text())
    groups: dict[str, Group] = {}
    missing: list[str] = []
    for p in manifest["points"]:
        res_path = out / p["name"] / RESULTS_FILE
        res = json.loads(res_path.read_text()) if res_path.is_file() else {}
        if not res.get("complete"):
            missing.append(p["name"])
            continue
        groups.setdefault(p["group"], Group(p["group"], p["overrides"])).runs.append(res)
    return manifest, list(groups.values()), missing


def write_summary(groups: list[Group], path: Path) -> None:
    """summary.csv: one row per group, override columns then mean/std of every metric."""
    keys: list[str] = []
    for g in groups:
        keys += [k for k in g.overrides if k not in keys]
    fields = ["point", *keys, "method", "mode", "rank", "epochs", "seeds", "n_seeds"]
    for m in METRICS:
        fields += [f"{m}_mean", f"{m}_std"]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for g in groups:
            row: dict[str, Any] = {"point": g.name, **{k: _cell(g.overrides.get(k, "")) for k in keys}}
            row.update(method=g.method, mode="" if g.dense else g.training["mode"],
                       rank="" if g.rank is None else g.rank, epochs=g.training["epochs"],
                       seeds=" ".join(str(r["seed"]) for r in g.runs), n_seeds=len(g.runs))
            for m in METRICS:
                mean, std = g.stat(m)
                row[f"{m}_mean"] = repr(mean)
                row[f"{m}_std"] = "" if math.isnan(std) else repr(std)
            w.writerow(row)


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def make_report(out: str | Path, float_ceiling: float | None = None) -> list[Path]:
    """Write DIR/summary.csv and DIR/figures/*.png; returns the paths written."""
    out = Path(out)
    manifest, groups, missing = load_groups(out)
    if not groups:
        raise ConfigError(f"{out}: no complete point yet (run `crossbar-ctl sweep` first)")
    if missing:
        print(f"report: {len(missing)} point(s) without a complete results.json left out")
    ceiling = float_ceiling if float_ceiling is not None else manifest.get("float_ceiling")
    written = [out / "summary.csv"]
    write_summary(groups, written[0])
    from crossbar_ctl.sweeps.figures import draw_all

    written += draw_all(groups, out / "figures", ceiling, title=manifest.get("name") or out.name)
    return written
