"""The ``crossbar-ctl`` command: config checks, training, op logs, benchmarks, the emulated tester."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from crossbar_ctl.config import RunConfig, default_toml, dump_toml, load_config
from crossbar_ctl.errors import CrossbarError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="run file (TOML); defaults apply where absent")
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set training.epochs=2 (repeatable)")


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file, args.set)
    sys.stdout.write(f"# {args.file}: valid\n")
    sys.stdout.write(dump_toml(cfg))
    return 0


def cmd_config_defaults(args: argparse.Namespace) -> int:
    sys.stdout.write(default_toml())
    return 0


def _run_config(args: argparse.Namespace) -> tuple[RunConfig, Path | None]:
    """The config of ``train`` (from --config/--set, or the run directory's results.json plus --set on
    --resume) and the run directory."""
    if args.resume is not None:
        ckpt_cfg = args.resume / "results.json"
        if not ckpt_cfg.is_file():
            raise CrossbarError(f"{args.resume}: no results.json to resume from")
        from crossbar_ctl.config import apply_override, config_from_dict

        data = json.loads(ckpt_cfg.read_text())["config"]
        for item in args.set:  # e.g. a tester that moved: --set backend.address=...
            apply_override(data, item)
        return config_from_dict(data, str(ckpt_cfg)), args.resume
    cfg = load_config(args.config, args.set)
    if args.dry_run:
        return cfg, args.out
    return cfg, args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")


def cmd_train(args: argparse.Namespace) -> int:
    cfg, out = _run_config(args)
    if args.dry_run:
        from crossbar_ctl.dryrun import dry_run, format_dry_run, parse_op_times

        report = dry_run(cfg, parse_op_times(args.op_time))
        print(json.dumps(report.as_dict(), indent=2) if args.json else format_dry_run(report))
        return 0 if report.ok else 2
    from crossbar_ctl.safety import stop_signals_raise
    from crossbar_ctl.training.trainer import Trainer

    assert out is not None
    try:
        with stop_signals_raise():
            trainer = Trainer(cfg, out, progress=not args.quiet)
            t = cfg.training
            how = f" ({t.mode}, rank {t.rank})" if t.method in ("svd", "streaming-pca", "nmf") else ""
            print(f"training {t.method}{how} on "
                  f"{cfg.backend.kind} with device {cfg.device.preset or cfg.device.model}; run directory {out}",
                  flush=True)
            res = trainer.run(resume=args.resume is not None)
    except (KeyboardInterrupt, SystemExit):
        print(f"crossbar-ctl: training stopped; the backend was closed in its safe state; continue with "
              f"crossbar-ctl train --resume {out}", file=sys.stderr, flush=True)
        raise
    print(f"final test accuracy {res['final_test_accuracy']:.4f}; results in {out / 'results.json'}")
    return 0


def cmd_log_show(args: argparse.Namespace) -> int:
    from crossbar_ctl.oplog import FILENAME
    from crossbar_ctl.oplog_summary import format_summary, summarize

    path = args.path / FILENAME if args.path.is_dir() else args.path
    if not path.is_file():
        raise CrossbarError(f"{args.path}: no op log ({FILENAME}) here")
    s = summarize(path)
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
    return 0 if s["sequence"]["ok"] else 1


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "sim":
        from crossbar_sim.bench import bench_sim

        result = bench_sim(quick=args.quick)
    elif args.what == "hil":
        from crossbar_instruments.bench import bench_hil

        result = bench_hil(quick=args.quick)
    else:
        from crossbar_ctl.training.bench import bench_train

        result = bench_train(quick=args.quick)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_tree(result)
    return 0


def cmd_emulate(args: argparse.Namespace) -> int:
    from crossbar_instruments.emulator import main as emulate

    if args.threads < 1:
        raise CrossbarError(f"--threads must be at least 1, got {args.threads}")
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    cfg = load_config(args.config, args.set)
    if args.rig == "smu-matrix":
        from crossbar_instruments.smu_rig import serve_rig

        if args.transport != "tcp":
            raise CrossbarError("the smu-matrix rig is served over TCP only (--transport tcp)")
        return serve_rig(cfg, host=args.host, smu_port=args.port, matrix_port=args.matrix_port)
    return emulate(cfg, args.transport, host=args.host, port=args.port, link=args.link)


def _print_tree(obj: object, indent: int = 0) -> None:
    pad = "  " * indent
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)):
                print(f"{pad}{k}:")
                _print_tree(v, indent + 1)
            else:
                print(f"{pad}{k}: {v}")
    elif isinstance(obj, list):
        for v in obj:
            _print_tree(v, indent)
            print()
    else:
        print(f"{pad}{obj}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossbar-ctl", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p_cfg = sub.add_parser("config", help="validate or show run configurations")
    cfg_sub = p_cfg.add_subparsers(dest="config_command", required=True)
    p_check = cfg_sub.add_parser("check", help="validate FILE and print the resolved config (presets expanded)")
    p_check.add_argument("file", type=Path)
    p_check.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE")
    p_check.set_defaults(func=cmd_config_check)
    p_def = cfg_sub.add_parser("show-defaults", help="print a complete commented default run file")
    p_def.set_defaults(func=cmd_config_defaults)

    p_train = sub.add_parser("train", help="train the MLP on the array (simulator by default)")
    _add_config_args(p_train)
    p_train.add_argument("--out", "-o", type=Path, help="run directory (default runs/train-<time>)")
    p_train.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from its checkpoint")
    p_train.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p_train.add_argument("--dry-run", action="store_true",
                         help="check the run (config, data, tile fit, limits) and estimate its operations and "
                              "duration without opening the backend")
    p_train.add_argument("--op-time", action="append", default=[], metavar="KIND=SECONDS",
                         help="--dry-run: seconds per operation of a kind (read_vmm, read_vmm_t, outer_pulse, "
                              "program, read_conductance), e.g. from crossbar-ctl bench hil")
    p_train.add_argument("--json", action="store_true", help="--dry-run: print JSON")
    p_train.set_defaults(func=cmd_train)

    p_log = sub.add_parser("log", help="inspect a run's op log")
    log_sub = p_log.add_subparsers(dest="log_command", required=True)
    p_show = log_sub.add_parser("show", help="summarise DIR/oplog.h5: ops per kind, sequence check, time span")
    p_show.add_argument("path", type=Path, metavar="DIR", help="run directory (or the .h5 file)")
    p_show.add_argument("--json", action="store_true", help="print JSON")
    p_show.set_defaults(func=cmd_log_show)

    p_bench = sub.add_parser("bench", help="benchmarks (speed goals live here, not in tests)")
    p_bench.add_argument("what", choices=["sim", "train", "hil"])
    p_bench.add_argument("--json", action="store_true", help="print JSON")
    p_bench.add_argument("--quick", action="store_true", help="fewer batches (a smoke run)")
    p_bench.set_defaults(func=cmd_bench)

    p_emu = sub.add_parser("emulate", help="serve an emulated array tester (the simulator) over TCP or a pty")
    _add_config_args(p_emu)
    p_emu.add_argument("--transport", choices=["tcp", "pty"], default="tcp",
                       help="tcp: raw SCPI socket (prints the VISA resource); pty: pseudo-terminal (prints its path)")
    p_emu.add_argument("--host", default="127.0.0.1", help="address to listen on (tcp; default loopback)")
    p_emu.add_argument("--port", type=int, default=5025, help="TCP port (0: any free port, printed)")
    p_emu.add_argument("--link", help="pty: also make this symlink to the pty (stable across reconnects)")
    p_emu.add_argument("--rig", choices=["tester", "smu-matrix"], default="tester",
                       help="tester: the array tester of hil/PROTOCOL.md; smu-matrix: a 2600B SMU and a 707B matrix "
                            "wired as [smu_matrix] says, on two TCP ports (--port and --matrix-port; prints both)")
    p_emu.add_argument("--matrix-port", type=int, default=0, help="smu-matrix: TCP port of the matrix (0: any)")
    p_emu.add_argument("--threads", type=int, default=1,
                       help="threads of the simulated device's kernels (default 1: a client on the same machine needs "
                            "the other cores; results are the same for any count)")
    p_emu.set_defaults(func=cmd_emulate)

    from crossbar_protocols.cli import add_protocol_parser

    add_protocol_parser(sub)
    from crossbar_ctl.sweeps.cli import add_sweep_parsers

    add_sweep_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (CrossbarError, FileNotFoundError, ValueError) as err:
        print(f"crossbar-ctl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crossbar-ctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
