"""``crossbar-ctl bench train``: training samples/s per method on the simulator, and the ratio to float."""
from __future__ import annotations

import os
import platform
from typing import Any

from crossbar_ctl.config import load_config
from crossbar_ctl.datasets import load_dataset
from crossbar_ctl.training.float_reference import float_samples_per_s
from crossbar_ctl.training.trainer import Trainer

CASES: list[tuple[str, str, int]] = [
    ("mbgd", "rank-sum", 1),
    ("streaming-pca", "rank-seq", 4),
    ("streaming-pca", "rank-sum", 4),
    ("nmf", "rank-seq", 4),
    ("nmf", "rank-sum", 4),
]


def _one(method: str, mode: str, rank: int, batch: int, n: int) -> float:
    cfg = load_config(None, [f"training.method=\"{method}\"", f"training.mode=\"{mode}\"", f"training.rank={rank}",
                             f"training.batch_size={batch}", f"training.limit_train={n}", "training.limit_test=10",
                             "training.epochs=1", "logging.progress=false"])
    trainer = Trainer(cfg, None, progress=False)
    trainer.run()
    return float(trainer.history[-1]["samples_per_s"])


def bench_train(quick: bool = False) -> dict[str, Any]:
    """Samples/s of each method at batch 64 and 1024 (agsi device), with the float32 numpy loop beside it."""
    data = load_dataset("mnist")
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "device": "agsi",
        "results": [],
    }
    for method, mode, rank in CASES:  # warm-up, as the float loop has: JIT compilation and caches are not training
        _one(method, mode, rank, 32, 64)
    for batch in (64, 1024):
        n = (2048 if quick else 10000) // batch * batch
        ref = float_samples_per_s(data.x_train[:n], data.y_train[:n], batch, 0.1)
        out[f"float32_numpy_samples_per_s_batch{batch}"] = ref
        for method, mode, rank in CASES:
            sps = _one(method, mode, rank, batch, n)
            out["results"].append({"method": method, "mode": mode, "rank": rank, "batch": batch,
                                   "samples_per_s": sps, "ratio_to_float": sps / ref})
    n = 500 if quick else 2000
    ref1 = float_samples_per_s(data.x_train[:n], data.y_train[:n], 1, 0.01)
    sps = _one("sgd", "rank-seq", 1, 1, n)
    out["float32_numpy_samples_per_s_batch1"] = ref1
    out["results"].append({"method": "sgd", "mode": "rank-seq", "rank": 1, "batch": 1,
                           "samples_per_s": sps, "ratio_to_float": sps / ref1})
    return out
