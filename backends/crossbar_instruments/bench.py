"""Speed of the instrument backends against the emulated tester in a separate process (``crossbar-ctl bench hil``).

* :func:`bench_transports`: ``read_vmm`` operations per second over VISA/TCP (pyvisa-py) and serial/pty
  (pyserial) on one tile (785×200 by default), and in process. Goal: ≥ 2,000/s over TCP.
* :func:`bench_training`: the training time of one short epoch over each transport divided by the same epoch in
  process (goal ≤ 3×), for a dense (MBGD, rank-sum) and a rank-seq (streaming PCA) run.
* :func:`bench_oplog`: what the op log costs an in-process epoch, flushed at batch ends (the default) or after
  every operation.

Each transport gets its own ``crossbar-ctl emulate`` child (:mod:`crossbar_instruments.launch`), configured with
the same run config as the client. ``python -m crossbar_instruments.bench [--quick]`` prints the same JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any

import numpy as np

from crossbar_ctl.backend import Backend, connect
from crossbar_ctl.config import RunConfig, config_from_dict, load_config
from crossbar_instruments.launch import emulated_tester, with_address

TRANSPORTS = (("tcp", "visa"), ("pty", "serial"))
TRAIN_CASES = (("mbgd", "rank-sum", 1), ("streaming-pca", "rank-seq", 4))


def _rate(b: Backend, v: np.ndarray, n: int) -> float:
    for _ in range(max(10, n // 20)):
        b.read_vmm(0, v)
    t0 = time.perf_counter()
    for _ in range(n):
        b.read_vmm(0, v)
    return n / (time.perf_counter() - t0)


def bench_transports(rows: int = 785, cols: int = 200, batch: int = 1, n: int = 2000) -> dict[str, Any]:
    """read_vmm operations per second over VISA/TCP, serial/pty and in process."""
    cfg: RunConfig = config_from_dict({"array": {"tiles": 1, "rows": rows, "cols": cols}})
    v = np.full((batch, rows), 0.1)
    with connect(cfg) as b:
        result: dict[str, Any] = {"tile": [rows, cols], "batch": batch, "ops": n,
                                  "in_process_ops_per_s": round(_rate(b, v, n))}
    for transport, kind in TRANSPORTS:
        with emulated_tester(cfg, transport) as emu:
            with connect(with_address(cfg, kind, emu.address)) as b:
                result[f"{kind}_{transport}_ops_per_s"] = round(_rate(b, v, n))
    result["goal_visa_tcp_ops_per_s"] = 2000
    return result


def _train_cfg(method: str, mode: str, rank: int, n_train: int, *extra: str) -> RunConfig:
    return load_config(None, [f'training.method="{method}"', f'training.mode="{mode}"', f"training.rank={rank}",
                              "training.batch_size=64", f"training.limit_train={n_train}", "training.limit_test=100",
                              "training.epochs=1", "logging.progress=false", *extra])


def _epoch_s(cfg: RunConfig, out_dir: str | None = None) -> tuple[float, dict[str, Any]]:
    from crossbar_ctl.training.trainer import Trainer

    trainer = Trainer(cfg, out_dir, progress=False)
    res = trainer.run()
    return float(res["epochs"][-1]["seconds"]), res


def bench_training(n_train: int = 2048, repeats: int = 3) -> list[dict[str, Any]]:
    """One epoch (784-100-10, batch 64) over each transport ÷ in process; final accuracies must agree.

    The epochs alternate (in process, TCP, pty, in process, ...) and each side keeps its fastest, so that a
    ratio compares runs made under the same machine state (this VM's speed drifts by ±20 % over minutes)."""
    rows = []
    for method, mode, rank in TRAIN_CASES:
        cfg = _train_cfg(method, mode, rank, n_train)
        times: dict[str, list[float]] = {"local": [], **{kind: [] for _, kind in TRANSPORTS}}
        accuracy: dict[str, list[float]] = {k: [] for k in times}
        for _ in range(repeats):
            t, res = _epoch_s(cfg)
            times["local"].append(t)
            accuracy["local"].append(res["final_test_accuracy"])
            for transport, kind in TRANSPORTS:  # a fresh tester each time: the array state lives on it
                with emulated_tester(cfg, transport) as emu:
                    t, res = _epoch_s(with_address(cfg, kind, emu.address))
                times[kind].append(t)
                accuracy[kind].append(res["final_test_accuracy"])
        local = min(times["local"])
        row: dict[str, Any] = {"method": method, "mode": mode, "rank": rank, "samples": n_train, "repeats": repeats,
                               "in_process_epoch_s": round(local, 4)}
        for transport, kind in TRANSPORTS:
            remote = min(times[kind])
            row[f"{kind}_{transport}_epoch_s"] = round(remote, 4)
            row[f"{kind}_{transport}_ratio"] = round(remote / local, 2)
            row[f"{kind}_{transport}_same_accuracy"] = set(accuracy[kind]) == set(accuracy["local"])
        rows.append(row)
    return rows


def bench_oplog(n_train: int = 2048, repeats: int = 3) -> list[dict[str, Any]]:
    """In-process epoch time with the op log off, flushed at batch ends, flushed after every operation; and the
    time spent inside the op log itself (``op_log_s`` of the epoch) over the rest of the epoch, which a busy
    machine disturbs less than the difference of two wall-clock times."""
    rows = []
    for method, mode, rank in TRAIN_CASES + (("nmf", "rank-seq", 4),):
        times: dict[str, float] = {}
        shares: list[float] = []
        for _ in range(repeats):
            for label, extra in (("off", ["logging.op_log=false"]), ("batch", ['logging.op_log_flush="batch"']),
                                 ("op", ['logging.op_log_flush="op"'])):
                with tempfile.TemporaryDirectory() as tmp:
                    t, res = _epoch_s(_train_cfg(method, mode, rank, n_train, *extra), tmp)
                times[label] = min(times.get(label, float("inf")), t)
                if label == "batch":
                    log_s = res["epochs"][-1]["op_log_s"]
                    shares.append(log_s / (t - log_s))
        rows.append({"method": method, "mode": mode, "epoch_s_no_log": round(times["off"], 4),
                     "overhead_batch_flush": round(times["batch"] / times["off"] - 1, 3),
                     "overhead_per_op_flush": round(times["op"] / times["off"] - 1, 3),
                     "time_in_log_batch_flush": round(float(np.median(shares)), 3)})
    return rows


def bench_hil(quick: bool = False) -> dict[str, Any]:
    """Everything ``crossbar-ctl bench hil`` reports."""
    return {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "load_average": list(os.getloadavg())},
        "read_vmm": bench_transports(n=500 if quick else 2000),
        "training_epoch": bench_training(n_train=512 if quick else 2048, repeats=1 if quick else 3),
        "training_epoch_goal_ratio": 3.0,
        "op_log": bench_oplog(n_train=512 if quick else 2048, repeats=1 if quick else 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossbar_instruments.bench", description=__doc__)
    p.add_argument("--rows", type=int, default=785)
    p.add_argument("--cols", type=int, default=200)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--n", type=int, default=2000, help="timed read_vmm calls per transport")
    p.add_argument("--all", action="store_true", help="the whole bench hil (training epochs, op log)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    out = bench_hil(a.quick) if a.all else bench_transports(a.rows, a.cols, a.batch, a.n)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
