"""Issue 5 round trip: characterise a simulated agsi tile, fit neurosim-exp, train with the fitted device and with
the true preset, and compare.

Usage:  .venv/bin/python studies/fit_round_trip.py --out runs/fit_round_trip [--seeds 0,1,2] [--epochs 10]

Steps, all through the library's public API (what the README's commands do):

1. ``ltp-ltd`` on every device of a ``--rows`` x ``--cols`` tile of the ``agsi`` preset on the simulator (parallel
   mode: one program and one read_conductance per step), ``--cycles`` cycles of ``--pulses`` potentiating and
   ``--pulses`` depressing single pulses: ``crossbar-ctl protocol run ltp-ltd --set mode=parallel ...``;
2. fit neurosim-exp and write ``OUT/device.toml`` (``crossbar-ctl protocol fit``); print fitted vs true parameters;
3. per seed, train MBGD (the default training config, ``--epochs`` epochs on the bundled MNIST subset, plus any
   ``--train-set`` overrides) once with ``OUT/device.toml`` and once with ``device.preset = "agsi"``, one run at a
   time (``crossbar-ctl train --config device.toml --set seed=S``).

Prints a parameter table and an accuracy table (per seed, mean ± sample std over seeds) and writes
``OUT/summary.json``. Training runs go to ``OUT/train/{fitted,true}/s<seed>`` (no op log).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from crossbar_ctl.config import config_from_dict, load_config
from crossbar_ctl.training.trainer import Trainer
from crossbar_protocols import make_protocol, run_protocol
from crossbar_protocols.fit import fit_result, write_fit
from crossbar_protocols.results import to_json

PRESET = "agsi"
#: Parameters compared with the preset (relative error); the spreads and stuck fractions are 0 in the preset.
COMPARED = ("g_min_S", "g_max_S", "a_ltp", "a_ltd", "pmax_ltp", "pmax_ltd", "sigma_c2c")
ABSENT = ("sigma_d2d_g_min", "sigma_d2d_g_max", "sigma_d2d_shape", "stuck_at_min_fraction", "stuck_at_max_fraction")


def characterise(out: Path, rows: int, cols: int, cycles: int, pulses: int, seed: int) -> Any:
    """Run ltp-ltd on every device of one simulated agsi tile; the result directory is ``out``."""
    rig = config_from_dict({"seed": seed, "array": {"tiles": 1, "rows": rows, "cols": cols},
                            "device": {"preset": PRESET}, "logging": {"progress": False}})
    proto = make_protocol("ltp-ltd", {"mode": "parallel", "cycles": cycles, "pulses_ltp": pulses,
                                      "pulses_ltd": pulses})
    return run_protocol(proto, rig, "0:*:*", out)


def compare(fitted: dict[str, Any]) -> list[dict[str, Any]]:
    """Fitted vs true value of each parameter, with the relative error (None where the true value is 0)."""
    true = config_from_dict({"device": {"preset": PRESET}}).device
    rows = []
    for key in COMPARED + ABSENT:
        t, f = float(getattr(true, key)), float(fitted[key])
        rows.append({"parameter": key, "fitted": f, "true": t, "rel_error": (f - t) / t if t else None})
    return rows


def train(device_toml: Path | None, seed: int, epochs: int, extra: list[str], out: Path) -> float:
    """Final test accuracy of one training run with the fitted device (``device_toml``) or the true preset."""
    sets = [f"seed={seed}", f"training.epochs={epochs}", "logging.op_log=false", "logging.progress=false", *extra]
    if device_toml is None:
        sets.insert(0, f'device.preset="{PRESET}"')
    cfg = load_config(device_toml, sets)
    return float(Trainer(cfg, out, progress=False).run()["final_test_accuracy"])


def _mean_std(x: list[float]) -> tuple[float, float]:
    return float(np.mean(x)), float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated (default 0,1,2)")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    ap.add_argument("--rows", type=int, default=32, help="tile rows characterised (default 32)")
    ap.add_argument("--cols", type=int, default=32, help="tile columns characterised (default 32)")
    ap.add_argument("--cycles", type=int, default=3, help="ltp-ltd cycles (default 3)")
    ap.add_argument("--pulses", type=int, default=120, help="potentiating = depressing pulses per cycle (120)")
    ap.add_argument("--rig-seed", type=int, default=0, help="seed of the characterised simulator (default 0)")
    ap.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra training config override, e.g. training.limit_train=1000 (repeatable)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out: Path = args.out
    t0 = time.monotonic()

    res = characterise(out / "characterise", args.rows, args.cols, args.cycles, args.pulses, args.rig_seed)
    report = fit_result(res, "neurosim-exp")
    write_fit(report, out / "device.toml", out / "characterise", source=str(out / "characterise"))
    params = compare(report.device)
    q = report.quality
    print(f"characterised {len(res.cells)} {PRESET} devices ({args.rows}x{args.cols}, {args.cycles} cycles of "
          f"{args.pulses}+{args.pulses} pulses); fit: one-step R² {q['r2_one_step']:.4f}, "
          f"mean-curve R² {q['r2_mean_curve']:.5f}")
    print(f"{'parameter':24s} {'fitted':>12s} {'true':>12s} {'rel. error':>10s}")
    for p in params:
        rel = f"{100 * p['rel_error']:+.2f} %" if p["rel_error"] is not None else "-"
        print(f"{p['parameter']:24s} {p['fitted']:12.5g} {p['true']:12.5g} {rel:>10s}")

    acc: dict[str, list[float]] = {"fitted": [], "true": []}
    print(f"\nMBGD, {args.epochs} epoch(s){', ' + ' '.join(args.train_set) if args.train_set else ''}: "
          "final test accuracy (%)")
    print(f"{'seed':>6s} {'fitted':>8s} {'true':>8s} {'diff':>7s}")
    for s in seeds:
        acc["fitted"].append(train(out / "device.toml", s, args.epochs, args.train_set, out / "train/fitted" / f"s{s}"))
        acc["true"].append(train(None, s, args.epochs, args.train_set, out / "train/true" / f"s{s}"))
        f, t = 100 * acc["fitted"][-1], 100 * acc["true"][-1]
        print(f"{s:6d} {f:8.2f} {t:8.2f} {f - t:+7.2f}", flush=True)
    (fm, fs), (tm, ts) = _mean_std(acc["fitted"]), _mean_std(acc["true"])
    diff = 100 * (fm - tm)
    print(f"{'mean':>6s} {100 * fm:5.2f}±{100 * fs:.2f} {100 * tm:5.2f}±{100 * ts:.2f} {diff:+7.2f}")
    print(f"fitted − true: {diff:+.2f} points ({'within' if abs(diff) <= 1 else 'NOT within'} 1 point); "
          f"{time.monotonic() - t0:.0f} s")

    summary = {
        "characterisation": {"preset": PRESET, "rows": args.rows, "cols": args.cols, "cycles": args.cycles,
                             "pulses_ltp": args.pulses, "pulses_ltd": args.pulses, "mode": "parallel",
                             "rig_seed": args.rig_seed, "cells": len(res.cells)},
        "fit": {"model": "neurosim-exp", "device": report.device, "stderr": report.stderr, "quality": q},
        "parameters": params,
        "training": {"method": "mbgd", "epochs": args.epochs, "overrides": args.train_set, "seeds": seeds,
                     "accuracy_fitted": acc["fitted"], "accuracy_true": acc["true"],
                     "mean_fitted": fm, "std_fitted": fs, "mean_true": tm, "std_true": ts,
                     "difference_points": diff, "within_1_point": bool(abs(diff) <= 1.0)},
        "elapsed_s": time.monotonic() - t0,
    }
    (out / "summary.json").write_text(to_json(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
