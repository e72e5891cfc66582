"""The trainer: mini-batches through the array, gradient compression on the host, pulses back to the array.

One step (ARCHITECTURE.md): batch → ``read_vmm`` per layer → loss → deltas via ``read_vmm_t`` → each layer's
compressor consumes the (x, δ) pairs → factor pairs → the controller turns them into pulse phases
(rank-seq) or row programs (rank-sum). Results, per-epoch metrics and checkpoints go to the run directory.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from crossbar_ctl.backend import Backend, connect
from crossbar_ctl.config import RunConfig, config_to_dict
from crossbar_ctl.controller import Controller
from crossbar_ctl.datasets import load_dataset
from crossbar_ctl.decomposition import make_compressor
from crossbar_ctl.oplog import FILENAME as OPLOG_FILENAME
from crossbar_ctl.oplog import OpLog
from crossbar_ctl.training.checkpoint import flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from crossbar_ctl.training.mlp import CrossbarMLP, he_init, layer_sizes

log = logging.getLogger(__name__)

# Independent random streams derived from the run seed (the simulator uses spawn key 1).
STREAM_DATA, STREAM_CONTROLLER, STREAM_COMPRESSOR = 2, 3, 4
# Op log flushing with [logging].op_log_flush = "batch": at the end of a batch, at most every
# OPLOG_BATCH_FLUSH_S (so a batch-1 run does not flush every few operations), and with at most
# OPLOG_MAX_BUFFER rows buffered. An HDF5 flush costs ~50-150 µs: flushing after every operation slowed
# in-process training by 50-100 % and training over TCP by 16-24 %; with batch-end flushes the whole op log
# costs in-process epochs ~7-12 % (6-8 % inside the log itself) and TCP epochs ~0-2 % (crossbar-ctl bench hil).
# On an instrument, every operation between flushes is also in the op log's journal (crossbar_ctl/oplog_journal.py,
# ~10 us per operation): a killed process loses at most the one in flight. A simulator run needs none: its resume
# restores the array from the checkpoint and cuts the log back to it.
OPLOG_BATCH_FLUSH_S = 0.05
OPLOG_MAX_BUFFER = 4096


def stream(seed: int, *key: int) -> np.random.Generator:
    """The run's random stream ``key`` (same seed and key ⇒ same numbers)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def versions() -> dict[str, str]:
    import numba
    import pydantic

    import crossbar_ctl

    return {
        "crossbar_ctl": crossbar_ctl.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "pydantic": pydantic.__version__,
    }


class Trainer:
    """Train the configured MLP on the configured backend; write ``results.json`` and checkpoints."""

    def __init__(self, config: RunConfig, out_dir: str | Path | None = None, backend: Backend | None = None,
                 progress: bool | None = None) -> None:
        t = config.training
        if t.method == "sgd" and t.batch_size != 1:
            raise ValueError(f"training.method = 'sgd' updates once per sample: set training.batch_size = 1 "
                             f"(got {t.batch_size})")
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = config.logging.progress if progress is None else progress
        self.data = load_dataset(t.dataset, data_dir=t.data_dir, limit_train=t.limit_train,
                                 limit_test=t.limit_test, pool_px=t.pool_px)
        self.sizes = layer_sizes(self.data.x_train.shape[1], list(t.hidden), 10)
        # Batches are gathered from the uint8 pixel codes where the data set has them (a quarter of the bytes; the
        # inputs are the same float32 numbers, code/255).
        d = self.data
        self._x_src, self._x_divisor = (d.x_train, 1.0) if d.codes_train is None else (d.codes_train, d.codes_divisor)
        self._own_backend = backend is None
        self.backend = backend if backend is not None else connect(config)
        self.oplog: OpLog | None = None
        try:  # a run that cannot be set up still leaves the backend it opened safe and closed
            self.rng = stream(config.seed, STREAM_DATA)
            self.controller = Controller(self.backend, config, self.sizes, stream(config.seed, STREAM_CONTROLLER))
            self.model = CrossbarMLP(self.controller)
            options: dict[str, Any] = {"passes": t.passes} if t.method in ("streaming-pca", "nmf") else {}
            if t.method == "nmf":
                options["split_signs"] = t.nmf_pairs == "split"
                if t.nmf_factors != "shared":
                    options["factors"] = t.nmf_factors
            self.compressors = [
                make_compressor(t.method, n, m, t.rank, stream(config.seed, STREAM_COMPRESSOR, l), **options)
                for l, (n, m) in enumerate(self.sizes)
            ]
        except BaseException:
            if self._own_backend:
                self.backend.close()
            raise
        self.estimated_s = self._warn_if_slow()
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.init_error: list[float] = []
        self.init_counts: dict[str, float] = {}

    def _warn_if_slow(self) -> float | None:
        """On a backend that declares itself slow, log the estimated duration (from its per-operation times)."""
        caps = self.backend.capabilities
        if not caps.slow:
            return None
        from crossbar_ctl.dryrun import count_ops, estimate_duration

        counts = count_ops(self.config, self.sizes, len(self.data.x_train), len(self.data.x_test))
        est = estimate_duration(self.config, counts, caps.op_time_s or None)
        composed = [name for name, native in (("read_vmm", caps.native_vmm), ("outer_pulse", caps.native_outer_pulse))
                    if not native]
        how = f"; it composes {' and '.join(composed)} from device operations" if composed else ""
        log.warning("backend %r is slow%s: estimated %.3g s per epoch, %.3g s for the run (%d epochs)",
                    self.backend.kind, how, est["epoch_s"], est["run_s"], self.config.training.epochs)
        return float(est["run_s"])

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train for the configured epochs (continuing from the last checkpoint if ``resume``).

        Whatever ends the run (completion, an exception, KeyboardInterrupt/SystemExit from a signal), a backend
        the trainer opened is closed, which leaves it in its safe state, and then the op log is closed."""
        try:
            notes: dict[str, Any] = {}
            self._open_oplog(resume)
            if resume:
                notes = self._load()
            if self.oplog is not None:
                self.oplog.begin_session("resume" if resume else "new", epoch=self.epoch,
                                         backend=self.backend.kind, next_seq=self.backend.seq + 1, **notes)
            if not resume:
                w0 = he_init(self.sizes, self.rng)
                self.init_error = [self.controller.program_weights(l, w) for l, w in enumerate(w0)]
                self.init_counts = self.controller.reset_counts()
            for epoch in range(self.epoch, self.config.training.epochs):
                self._train_epoch(epoch)
                self.epoch = epoch + 1
                if self.out_dir is not None and (self.epoch % self.config.training.checkpoint_every == 0
                                                 or self.epoch == self.config.training.epochs):
                    self._save()
            results = self.results(complete=True)
            self._write_results(results)
            return results
        finally:
            try:
                if self._own_backend:
                    self.backend.close()  # may still log an operation resolved late: the op log closes after
            finally:
                self._close_oplog()

    def _open_oplog(self, resume: bool) -> None:
        if self.out_dir is None or not self.config.logging.op_log:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        every = 1 if self.config.logging.op_log_flush == "op" else OPLOG_MAX_BUFFER
        # a backend whose state the checkpoint restores (the simulator) rolls its log back on resume: no journal
        journal = not hasattr(self.backend, "set_state")
        self.oplog = OpLog(self.out_dir / OPLOG_FILENAME, "a" if resume else "w", flush_every=every, journal=journal)
        self.backend.add_listener(self.oplog.record)

    def _close_oplog(self) -> None:
        if self.oplog is not None:
            self.backend.remove_listener(self.oplog.record)
            self.oplog.close()

    def _train_epoch(self, epoch: int) -> None:
        t = self.config.training
        x, y = self.data.x_train, self.data.y_train
        perm = self.rng.permutation(len(x))
        bs = t.batch_size
        n_batches = (len(x) + bs - 1) // bs
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(x), desc=f"epoch {epoch + 1}/{t.epochs}", unit="sample", leave=False)
        lr = t.learning_rate * t.lr_decay ** epoch
        loss_sum, correct, seen = 0.0, 0, 0
        log_s = self.oplog.busy_s if self.oplog is not None else 0.0
        start = time.perf_counter()
        for b in range(n_batches):
            idx = perm[b * bs : (b + 1) * bs]
            res = self.model.step(self._x_src, y, idx, self._x_divisor)  # gathers x[idx] in its first read pass
            for l, comp in enumerate(self.compressors):
                comp.start_batch()
                comp.consume(res.inputs[l], res.deltas[l], x_checked=True)  # the read refused non-finite inputs
                self.controller.apply_update(l, comp.finish_batch(), lr, t.mode)
            if self.oplog is not None:
                self.oplog.flush(OPLOG_BATCH_FLUSH_S)  # nothing to do with op_log_flush = "op"
            loss_sum += res.loss * len(idx)
            correct += res.correct
            seen += len(idx)
            if bar is not None:
                bar.update(len(idx))
                if b % 20 == 0 or b == n_batches - 1:
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        train_s = time.perf_counter() - start
        if self.oplog is not None:
            log_s = self.oplog.busy_s - log_s
        if bar is not None:
            bar.close()
        test_acc = self.evaluate()
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "test_accuracy": test_acc,
            "seconds": train_s,
            "samples_per_s": seen / train_s if train_s > 0 else float("inf"),
        }
        if self.oplog is not None:
            row["op_log_s"] = log_s  # the op log's share of "seconds"
        self.history.append(row)
        log.info("epoch %d: loss %.4f train %.4f test %.4f (%.0f samples/s)", row["epoch"], row["train_loss"],
                 row["train_accuracy"], test_acc, row["samples_per_s"])
        if self.progress:
            print(f"epoch {row['epoch']}: train_loss {row['train_loss']:.4f}  train_acc {row['train_accuracy']:.4f}"
                  f"  test_acc {test_acc:.4f}  {row['samples_per_s']:.0f} samples/s", flush=True)
        if self.out_dir is not None:
            self._write_results(self.results(complete=False))

    def evaluate(self) -> float:
        """Test accuracy, read on the array."""
        pred = self.model.predict(self.data.x_test)
        return float(np.mean(pred == self.data.y_test))

    # ------------------------------------------------------------------ results
    def results(self, complete: bool) -> dict[str, Any]:
        counts = self.controller.counts.summary()
        return {
            "complete": complete,
            "config": config_to_dict(self.config),
            "seed": self.config.seed,
            "backend": self.backend.describe() if not self.backend._closed else {"kind": self.backend.kind},
            "layers": [list(s) for s in self.sizes],
            "epochs": self.history,
            "final_test_accuracy": self.history[-1]["test_accuracy"] if self.history else None,
            "memory_floats": [c.memory_floats for c in self.compressors],
            "initial_weight_rms_error": self.init_error,
            "initial_programming": self.init_counts,
            **counts,
            "versions": versions(),
        }

    def _write_results(self, results: dict[str, Any]) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.out_dir / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(self.out_dir / "results.json")

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_path(self) -> Path:
        assert self.out_dir is not None
        return self.out_dir / "checkpoint.npz"

    def _save(self) -> None:
        self.backend.settle()  # every operation sent is confirmed and logged before the checkpoint counts them
        arrays: dict[str, np.ndarray] = {}
        for l, comp in enumerate(self.compressors):
            flatten_state(f"compressor{l}", comp.state_dict(), arrays)
        for l, pd in enumerate(self.controller.counts.per_device_counts()):
            arrays[f"pulses{l}"] = pd
        if hasattr(self.backend, "get_state"):
            flatten_state("backend", self.backend.get_state(), arrays)
        c = self.controller.counts
        if self.oplog is not None:
            self.oplog.flush()  # the log is never behind a checkpoint
        meta = {
            "epoch": self.epoch,
            "backend_kind": self.backend.kind,
            "backend_seq": self.backend.seq,
            "history": self.history,
            "init_error": self.init_error,
            "init_counts": self.init_counts,
            "counts": {"reads": c.reads, "phases": c.phases, "row_programs": c.row_programs,
                       "program_ops": c.program_ops, "device_pulses": c.device_pulses},
            "rng": self.rng.bit_generator.state,
            "controller_rng": self.controller.rng.bit_generator.state,
            "config": config_to_dict(self.config),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        save_checkpoint(self._checkpoint_path(), arrays, meta)

    def _load(self) -> dict[str, Any]:
        """Restore the checkpoint; returns notes for the op log's session entry.

        Only a backend with ``set_state`` (the in-process simulator) gets its array state back; then every
        operation logged after the checkpoint is undone, and the op log is cut back to it. An instrument's
        array state lives on the instrument: nothing is restored, operations applied after the checkpoint stay
        applied (they are kept in the log), and sequence numbers continue after the last one used."""
        if self.out_dir is None:
            raise ValueError("resume needs a run directory")
        arrays, meta = load_checkpoint(self._checkpoint_path())
        self.epoch = int(meta["epoch"])
        self.history = list(meta["history"])
        self.init_error = list(meta["init_error"])
        self.init_counts = dict(meta["init_counts"])
        for k, v in meta["counts"].items():
            setattr(self.controller.counts, k, v)
        for l in range(len(self.sizes)):
            self.controller.counts.per_device[l] = arrays[f"pulses{l}"].astype(np.float64)
            self.compressors[l].load_state_dict(unflatten_state(f"compressor{l}", arrays))
        self.rng.bit_generator.state = meta["rng"]
        self.controller.rng.bit_generator.state = meta["controller_rng"]
        ckpt_seq = int(meta.get("backend_seq", 0))
        notes: dict[str, Any] = {"checkpoint_seq": ckpt_seq}
        if hasattr(self.backend, "set_state"):
            self.backend.set_state(unflatten_state("backend", arrays))
            if self.oplog is not None:
                notes["rolled_back_ops"] = self.oplog.truncate_after(self.backend.seq)
        else:
            last = self.oplog.last_seq if self.oplog is not None else 0
            self.backend.seq = max(ckpt_seq, last)
            on_tester = self.backend.instrument_seq_at_open
            if on_tester is not None and on_tester > self.backend.seq:  # applied, never logged: a killed process
                notes["applied_not_logged"] = list(range(self.backend.seq + 1, on_tester + 1))
                log.warning("the %s had applied %d operation(s) after the op log's last (seq %d..%d), lost with the "
                            "process that sent them; sequence numbers continue after them", self.backend.kind,
                            on_tester - self.backend.seq, self.backend.seq + 1, on_tester)
                self.backend.seq = on_tester
            if last > ckpt_seq:
                notes["kept_ops_after_checkpoint"] = last - ckpt_seq
                log.warning("%d operations (seq %d..%d) were applied to the %s array after the last checkpoint; "
                            "they stay applied and the epoch restarts from the checkpoint", last - ckpt_seq,
                            ckpt_seq + 1, last, self.backend.kind)
        log.info("resumed %s at epoch %d", self.out_dir, self.epoch)
        return notes


def train(config: RunConfig, out_dir: str | Path | None = None, resume: bool = False,
          progress: bool | None = None) -> dict[str, Any]:
    """Train one run; returns the results dict (also written to ``out_dir/results.json``)."""
    return Trainer(config, out_dir, progress=progress).run(resume=resume)
