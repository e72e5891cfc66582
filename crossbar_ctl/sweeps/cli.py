"""``crossbar-ctl sweep`` and ``crossbar-ctl report``; the main command adds both with ``add_sweep_parsers(sub)``.

    crossbar-ctl sweep SWEEP.toml --out DIR [--scheduler ADDRESS | --workers N] [--quiet]
    crossbar-ctl report DIR [--float-ceiling ACC]

Both set ``func(args) -> int`` as the other subcommands do (0: success; sweep returns 1 if a point failed).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def cmd_sweep(args: argparse.Namespace) -> int:
    from crossbar_ctl.sweeps.runner import run_sweep
    from crossbar_ctl.sweeps.spec import expand_points, load_sweep

    spec = load_sweep(args.sweep)
    points = expand_points(spec)
    print(f"{args.sweep}: {len(points)} point(s) -> {args.out}")
    workers = args.workers if args.workers is not None else min(2, os.cpu_count() or 1)
    summary = run_sweep(spec, points, args.out, scheduler=args.scheduler, workers=workers,
                        progress=not args.quiet)
    print(f"sweep: {summary.line()}")
    if summary.failed:
        print("failed (see DIR/<point>/error.json): " + ", ".join(summary.failed))
    print(f"next: crossbar-ctl report {args.out}")
    return 1 if summary.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from crossbar_ctl.sweeps.report import make_report

    written = make_report(args.dir, float_ceiling=args.float_ceiling)
    for path in written:
        print(path)
    return 0


def add_sweep_parsers(sub: Any) -> None:
    """Register the ``sweep`` and ``report`` subcommands on the main command's subparsers."""
    p_sweep = sub.add_parser("sweep", help="run a sweep file's points (simulator runs) on Dask; resumable")
    p_sweep.add_argument("sweep", type=Path, metavar="SWEEP.toml", help="the sweep file")
    p_sweep.add_argument("--out", "-o", type=Path, required=True,
                         help="sweep directory: one run directory per point, plus sweep.json")
    where = p_sweep.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="connect to this Dask scheduler (tcp://host:8786); its workers must see --out")
    where.add_argument("--workers", "-j", type=int, default=None,
                       help="worker processes of the local cluster (default: min(2, cores))")
    p_sweep.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p_sweep.set_defaults(func=cmd_sweep)

    p_rep = sub.add_parser("report", help="aggregate a sweep directory into summary.csv and figures")
    p_rep.add_argument("dir", type=Path, metavar="DIR", help="the sweep's --out directory")
    p_rep.add_argument("--float-ceiling", type=float, metavar="ACC",
                       help="float-network test accuracy (fraction, e.g. 0.937); overrides the sweep file's")
    p_rep.set_defaults(func=cmd_report)
