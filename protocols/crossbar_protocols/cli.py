"""``crossbar-ctl protocol …``: list, run and fit characterisation protocols.

The main command adds these with one call, ``add_protocol_parser(subparsers)``; every subcommand sets
``func(args) -> int`` as the others do.

    crossbar-ctl protocol list [NAME] [--json]
    crossbar-ctl protocol run NAME [--config RIG.toml] [--set key=value ...] [--cells SPEC] --out DIR [--dry-run]
    crossbar-ctl protocol fit DIR [--model neurosim-exp|tabular] [--out device.toml]

``--set`` takes protocol parameters (``cycles=5``) and run-config keys (``device.sigma_c2c=0``,
``array.rows=8``): a key whose first part names a run-config section goes to the config.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from crossbar_ctl.config import apply_override, load_config
from crossbar_ctl.dryrun import parse_op_times
from crossbar_ctl.errors import ConfigError

_SECTIONS_HELP = "backend, array, device, read, pulse, limits, training, logging, seed"


def split_sets(items: list[str]) -> tuple[dict[str, Any], list[str]]:
    """``--set`` items as (protocol parameters, run-config overrides)."""
    from crossbar_protocols.base import RESERVED_NAMES

    params: dict[str, Any] = {}
    config: list[str] = []
    for item in items:
        key = item.split("=", 1)[0].strip()
        if key.split(".", 1)[0] in RESERVED_NAMES:
            config.append(item)
        elif "." in key:
            raise ConfigError(f"--set {item!r}: {key.split('.', 1)[0]!r} is not a run-config section "
                              f"({_SECTIONS_HELP}) and protocol parameters have no dots")
        else:
            apply_override(params, item, source="--set")
    return params, config


def _param_lines(cls: Any) -> list[str]:
    lines = []
    for key, f in cls.Params.model_fields.items():
        lines.append(f"    {key} = {f.default!r}  # {f.description or ''}")
    return lines


def cmd_protocol_list(args: argparse.Namespace) -> int:
    from crossbar_protocols.base import available_protocols, protocol_class

    names = [args.name] if args.name else available_protocols()
    info = []
    for name in names:
        cls = protocol_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        info.append({"name": name, "summary": doc, "default_cells": cls.default_cells,
                     "params": {k: {"default": f.default, "description": f.description}
                                for k, f in cls.Params.model_fields.items()}})
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for item in info:
        print(f"{item['name']:14s} {item['summary']}  (cells: {item['default_cells']})")
        if args.name:
            print("\n".join(_param_lines(protocol_class(item["name"]))))
    return 0


def cmd_protocol_run(args: argparse.Namespace) -> int:
    from crossbar_protocols.base import make_protocol
    from crossbar_protocols.runner import dry_run, run_protocol

    params, overrides = split_sets(args.set)
    cfg = load_config(args.config, overrides)
    proto = make_protocol(args.name, params)
    if args.dry_run:
        report = dry_run(proto, cfg, args.cells, parse_op_times(args.op_time))
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            est = report["estimate"]
            print(f"protocol {proto.name} on {report['backend']}: {report['cells']} cell(s); limits: "
                  f"{report['limits']}")
            print(f"  pulses {est['pulses']}, reads {est['reads']}, operations "
                  + ", ".join(f"{k} {v}" for k, v in est["ops"].items())
                  + f"; about {est['duration_s']:.3g} s (of which waiting {est['wait_s']:.3g} s)")
        return 0 if report["ok"] else 2
    from crossbar_ctl.safety import stop_signals_raise

    out = args.out or Path("runs") / time.strftime(f"protocol-{proto.name}-%Y%m%d-%H%M%S")
    try:  # SIGINT/SIGTERM: finish the operation in flight, then the runner closes the backend in its safe state
        with stop_signals_raise():
            res = run_protocol(proto, cfg, args.cells, out, progress=not args.quiet, plots=not args.no_plots)
    except (KeyboardInterrupt, SystemExit):
        print(f"crossbar-ctl: protocol {proto.name} stopped; the backend was closed in its safe state; the "
              f"operations applied so far are in {out / 'oplog.h5'}", file=sys.stderr, flush=True)
        raise
    short = {k: v for k, v in res.summary.items() if not (isinstance(v, list) and len(v) > 8)}
    if args.json:
        print(json.dumps({"out": str(out), "summary": short}, indent=2, default=str))
    else:
        print(f"{proto.name}: {len(res.cells)} cell(s) measured; results in {out}")
        for k, v in short.items():
            print(f"  {k}: {v}")
    return 0


def cmd_protocol_fit(args: argparse.Namespace) -> int:
    from crossbar_protocols.fit import fit_result, write_fit
    from crossbar_protocols.results import read_result

    res = read_result(args.dir)
    extra = {"bins": args.bins} if args.model == "tabular" else {}
    report = fit_result(res, args.model, v_threshold_V=args.v_threshold, **extra)
    out = args.out or Path(args.dir) / "device.toml"
    files = write_fit(report, out, args.dir, source=str(args.dir))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    elif args.model == "tabular":
        d, q = report.device, report.quality
        print(f"built a tabular device from {args.dir}: Gmin {d['g_min_S']:.4g} S, Gmax {d['g_max_S']:.4g} S, "
              f"{q['bins']} bins, {q['cells_fitted']} cells, {q['transitions']} steps")
        print(f"  standardised residual std {q['standardised_residual_std']:.3f}, mean-curve R² "
              f"{q['r2_mean_curve']:.4f}; wrote {', '.join(str(f) for f in files)}")
        for n in report.notes:
            print(f"  note: {n}")
    else:
        d, q = report.device, report.quality
        print(f"fitted {args.model} to {args.dir}: Gmin {d['g_min_S']:.4g} S, Gmax {d['g_max_S']:.4g} S, "
              f"A_p {d['a_ltp']:.3g}, A_d {d['a_ltd']:.3g}, Pmax {d['pmax_ltp']:.4g}/{d['pmax_ltd']:.4g}, "
              f"sigma_c2c {d['sigma_c2c']:.3g}")
        print(f"  one-step R² {q['r2_one_step']:.4f}, mean-curve R² {q['r2_mean_curve']:.4f}; "
              f"wrote {', '.join(str(f) for f in files)}")
        for n in report.notes:
            print(f"  note: {n}")
    return 0


def add_protocol_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``protocol list|run|fit`` to the main command's subparsers; returns the ``protocol`` parser."""
    p = subparsers.add_parser("protocol", help="device characterisation: run pulse protocols, fit device models")
    sub = p.add_subparsers(dest="protocol_command", required=True)

    pl = sub.add_parser("list", help="installed protocols (with NAME: its parameters)")
    pl.add_argument("name", nargs="?", help="show this protocol's parameters")
    pl.add_argument("--json", action="store_true", help="print JSON")
    pl.set_defaults(func=cmd_protocol_list)

    pr = sub.add_parser("run", help="run a protocol on the rig of a config and write DIR (HDF5, CSV, plots)")
    pr.add_argument("name", help="protocol name (see protocol list)")
    pr.add_argument("--config", "-c", type=Path, help="rig/run file (TOML); defaults apply where absent")
    pr.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                    help="protocol parameter (cycles=5) or run-config key (device.sigma_c2c=0); repeatable")
    pr.add_argument("--cells", help="cells as TILE:ROWS:COLS[,...], parts '*', 'i' or 'a-b' "
                                    "(default: the protocol's, e.g. 0:0:0-7)")
    pr.add_argument("--out", "-o", type=Path, help="result directory (default runs/protocol-NAME-<time>)")
    pr.add_argument("--dry-run", action="store_true",
                    help="check limits and cells, estimate pulses, reads and duration; open nothing")
    pr.add_argument("--op-time", action="append", default=[], metavar="KIND=SECONDS",
                    help="--dry-run: seconds per operation of a kind (read_cell, pulse_cell, program, ...)")
    pr.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    pr.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    pr.add_argument("--json", action="store_true", help="print JSON")
    pr.set_defaults(func=cmd_protocol_run)

    pf = sub.add_parser("fit", help="fit a device model to a protocol result and write a [device] TOML")
    pf.add_argument("dir", type=Path, metavar="DIR", help="result directory of an ltp-ltd run")
    pf.add_argument("--model", default="neurosim-exp", choices=["neurosim-exp", "tabular"],
                    help="device model: neurosim-exp (fitted curves) or tabular (measured ΔG statistics per G bin)")
    pf.add_argument("--bins", type=int, default=16, help="tabular: G bins over [Gmin, Gmax] (default 16)")
    pf.add_argument("--out", "-o", type=Path, help="device TOML to write (default DIR/device.toml)")
    pf.add_argument("--v-threshold", type=float, metavar="V",
                    help="switching threshold (V) for converting pulse amplitudes (default: the rig config's)")
    pf.add_argument("--json", action="store_true", help="print the fit report as JSON")
    pf.set_defaults(func=cmd_protocol_fit)
    return p


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m crossbar_protocols.cli protocol run ...``) until the main CLI adds it."""
    from crossbar_ctl.errors import CrossbarError

    parser = argparse.ArgumentParser(prog="crossbar-ctl")
    add_protocol_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CrossbarError, FileNotFoundError, ValueError) as err:
        print(f"crossbar-ctl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
