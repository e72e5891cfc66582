"""Shared pieces of the hardware-in-the-loop tests: a tiny training run and op-log checks."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from crossbar_ctl.backend import connect
from crossbar_ctl.config import RunConfig, load_config
from crossbar_ctl.oplog import read_log
from crossbar_ctl.oplog_summary import check_sequence

#: A training run small enough for a test (a second or so over a transport), with noise on so that any
#: extra or missing random draw shows.
TINY = ["training.limit_train=256", "training.limit_test=128", "training.hidden=[16]", "training.epochs=1",
        "training.batch_size=32", "array.rows=[785, 17]", "array.cols=[32, 20]", "seed=11",
        "read.read_noise=0.02", "device.sigma_c2c=0.02", "logging.progress=false"]
METHODS = {"mbgd-rank-sum": ['training.method="mbgd"', 'training.mode="rank-sum"'],
           "pca-rank-seq": ['training.method="streaming-pca"', 'training.mode="rank-seq"', "training.rank=2"]}


def tiny(*extra: str, method: str = "pca-rank-seq") -> RunConfig:
    return load_config(None, [*TINY, *METHODS[method], *extra])


def conductances(cfg: RunConfig) -> list[np.ndarray]:
    """Noise-free conductances of every tile, through a fresh connection (a diagnostic query for a tester: it
    is not an array operation and draws no random numbers)."""
    with connect(cfg) as b:
        return [b.true_conductance(t) for t in range(b.n_tiles)]


def log_seqs(run_dir: Path) -> np.ndarray:
    return read_log(Path(run_dir) / "oplog.h5")["ops"]["seq"]


def assert_log_consecutive(run_dir: Path, first: int = 1) -> dict[str, Any]:
    """The op log's sequence numbers are first, first+1, ... with no gap, duplicate or disorder."""
    seqs = log_seqs(run_dir)
    chk = check_sequence(seqs)
    assert chk["ok"] and chk["first"] == first, chk
    return chk


def history(res: dict[str, Any]) -> list[tuple[float, float, float]]:
    return [(e["train_loss"], e["train_accuracy"], e["test_accuracy"]) for e in res["epochs"]]
