"""Round-trip speed of the instrument backends against the emulated tester in a separate process.

``python -m crossbar_instruments.bench [--rows 785 --cols 200 --batch 1 --n 2000]`` starts
``crossbar-ctl emulate`` twice (TCP on a free loopback port, then a pty), connects VisaBackend (pyvisa-py) and
SerialBackend (pyserial) and times ``read_vmm``; the in-process simulator is timed for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from crossbar_ctl.backend import Backend, connect
from crossbar_ctl.config import RunConfig, config_from_dict, dump_toml


def _rate(b: Backend, v: np.ndarray, n: int) -> float:
    for _ in range(max(10, n // 20)):
        b.read_vmm(0, v)
    t0 = time.perf_counter()
    for _ in range(n):
        b.read_vmm(0, v)
    return n / (time.perf_counter() - t0)


def bench_transports(rows: int = 785, cols: int = 200, batch: int = 1, n: int = 2000) -> dict[str, Any]:
    """read_vmm operations per second over VISA/TCP, serial/pty and in process."""
    base = {"array": {"tiles": 1, "rows": rows, "cols": cols}}
    cfg: RunConfig = config_from_dict(base)
    v = np.full((batch, rows), 0.1)
    result: dict[str, Any] = {"tile": [rows, cols], "batch": batch, "ops": n,
                              "in_process_ops_per_s": round(_rate(connect(cfg), v, n))}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "run.toml")
        with open(path, "w") as f:
            f.write(dump_toml(cfg))
        for transport, kind in (("tcp", "visa"), ("pty", "serial")):
            args = [sys.executable, "-m", "crossbar_ctl.cli", "emulate", "--config", path, "--transport", transport,
                    "--port", "0"]
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
            try:
                address = proc.stdout.readline().strip()
                with connect(config_from_dict({**base, "backend": {"kind": kind, "address": address}})) as b:
                    result[f"{kind}_{transport}_ops_per_s"] = round(_rate(b, v, n))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossbar_instruments.bench", description=__doc__)
    p.add_argument("--rows", type=int, default=785)
    p.add_argument("--cols", type=int, default=200)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--n", type=int, default=2000, help="timed read_vmm calls per transport")
    a = p.parse_args(argv)
    print(json.dumps(bench_transports(a.rows, a.cols, a.batch, a.n), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
