"""The op log: an append-only HDF5 record of every array operation of a run (``DIR/oplog.h5``).

Attached as a :meth:`~crossbar_ctl.backend.Backend.add_listener` callback, it stores one row per operation in
the compound dataset ``ops``: ``seq`` (the backend's sequence number, from 1), ``time_s`` (wall-clock time, s
since the epoch), ``tile``, ``kind`` and ``status`` (indices into the ``kinds``/``statuses`` name lists kept as
JSON file attributes), ``session`` (the :meth:`OpLog.begin_session` that wrote it), and ``p_off``/``p_len``:
where the operation's parameters sit, as UTF-8 JSON, in the byte dataset ``params``. Scalars are stored as they
are; arrays of at most :data:`INLINE_MAX` elements inline, larger ones as
``{"sha256": ..., "shape": [...], "dtype": ..., "hashed_as": ...}`` (see :func:`hash_form`). ``sessions`` holds one
JSON entry per session (a new run or a resume) with its mode and notes. :func:`read_log` decodes it all.

Durability: ``ops`` and ``params`` grow in chunks, ``ops`` filled with ``seq = 0``; a flush writes the
parameter bytes first and the rows after them, so a row is valid once its ``seq`` is written and the committed
rows are the leading rows with ``seq > 0`` (no separate counter to keep in step). Rows are buffered and written
by :meth:`OpLog.flush` (every ``flush_every`` operations, 1 by default; the trainer, with
``[logging].op_log_flush = "batch"``, flushes at batch ends instead; always on close), which ends with
``H5Fflush``; a flush interrupted by a signal is redone by the next one. Rows not yet flushed are also written
to the journal (:mod:`crossbar_ctl.oplog_journal`, one ``os.write`` per operation), which the next open of the log
(or :func:`read_log`) recovers: a process that dies loses at most the operations in flight (one, or two when an
instrument driver pipelines writes: a write is logged when its status arrives), and of the operations
after the last flush only the sha256 of large arrays still being computed (recorded as ``null``). An exception
or a signal loses nothing: the trainer closes the log in a ``finally``. What ``log show`` prints is made by
:mod:`crossbar_ctl.oplog_summary`. Writes go through h5py's
low-level API with prepared memory types and no variable-length data (a few tens of µs per row and flush,
against ~0.5 ms through the high-level API with a vlen string column).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5f, h5s, h5t

from crossbar_ctl.backend import OpRecord
from crossbar_ctl.oplog_journal import Journal, encode_entry, journal_path, pending_entries

FORMAT = "crossbar_ctl.oplog"
VERSION = 1
FILENAME = "oplog.h5"
INLINE_MAX = 16  # arrays with at most this many elements are stored in full
THREAD_HASH_BYTES = 1 << 15  # arrays at least this large are hashed in a worker thread (hashlib drops the GIL)
CHUNK = 1024
KINDS = ("read_vmm", "read_vmm_t", "read_conductance", "read_cell", "outer_pulse", "program", "pulse_cell")
STATUSES = ("ok", "late", "error")  # late: applied, reply lost, logged when resolved; error: applied + error
_STATUS_IX = {s: i for i, s in enumerate(STATUSES)}
PARAM_CHUNK = 1 << 16  # bytes
_STR = h5py.string_dtype("utf-8")
ROW = np.dtype([("seq", "<i8"), ("time_s", "<f8"), ("tile", "<i2"), ("kind", "u1"), ("status", "u1"),
                ("session", "<u2"), ("p_off", "<u8"), ("p_len", "<u4")])


_SCALARS = (int, float, str, bool, type(None))
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_jstr = json.encoder.encode_basestring  # type: ignore[attr-defined]


def encode_param(value: Any) -> Any:
    """A JSON-able form of one parameter value (large arrays become their sha256 digest, shape and dtype)."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, np.ndarray):
        if value.size <= INLINE_MAX:
            return {"values": value.tolist(), "shape": list(value.shape), "dtype": value.dtype.str}
        hashed = hash_form(value)
        return {"sha256": hashlib.sha256(hashed.data).hexdigest(), "shape": list(value.shape),
                "dtype": value.dtype.str, "hashed_as": hashed.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    return value


def hash_form(value: np.ndarray) -> np.ndarray:
    """The C-order array whose bytes are digested: integer arrays (pulse counts) cast to the narrowest signed
    type that holds them (a 785×200 count matrix hashes as 157 kB of int8, not 628 kB of int32: ~4× faster),
    anything else as it is."""
    a = np.ascontiguousarray(value)
    if a.dtype.kind in "iu" and a.size:
        lo, hi = int(a.min()), int(a.max())
        for dt in (np.int8, np.int16, np.int32):
            info = np.iinfo(dt)
            if info.min <= lo and hi <= info.max:
                return a if a.dtype == dt else a.astype(dt)
    return a


def digest(value: np.ndarray) -> str:
    """The sha256 the log records for an array (see :func:`hash_form`), to check a replay against."""
    return _sha256(hash_form(value))


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(a.data).hexdigest()


def committed_rows(seq: np.ndarray) -> int:
    """How many leading rows are committed (``seq > 0``)."""
    bad = np.flatnonzero(np.asarray(seq) <= 0)
    return int(bad[0]) if bad.size else int(len(seq))


@dataclass(frozen=True)
class _Digest:
    """A large array's digest being computed in the worker thread."""

    shape: tuple[int, ...]
    dtype: str
    hashed_as: str
    sha256: Future


class OpLog:
    """An open op log. ``mode="w"`` starts a new file, ``"a"`` appends (resume; a missing file is created).
    Use :meth:`record` as the backend listener; :meth:`close` flushes and closes (idempotent)."""

    def __init__(self, path: str | Path, mode: str = "w", flush_every: int = 1, journal: bool = True) -> None:
        """``journal``: with ``flush_every > 1``, also append each row to the journal at once (an instrument run
        needs it; a simulator run rolls its log back to the checkpoint on resume anyway, and skips the cost)."""
        if mode not in ("w", "a"):
            raise ValueError(f"mode must be 'w' (new log) or 'a' (append), got {mode!r}")
        self.path = Path(path)
        self.flush_every = max(1, int(flush_every))
        self.journal = bool(journal)
        self._buf: list[tuple[Any, ...]] = []
        self._flushed_at = time.monotonic()
        self._pool: ThreadPoolExecutor | None = None
        self.busy_s = 0.0  # time spent recording and flushing (s): what the log costs the caller
        self.created = mode == "w" or not self.path.exists()
        self._journal: Journal | None = None  # opened by the first operation recorded with flush_every > 1
        self.recovered = 0  # rows taken from the journal a dead process left
        if self.created:
            journal_path(self.path).unlink(missing_ok=True)  # a journal beside a new log is stale
        self._f = h5py.File(self.path, "w" if self.created else "a")
        f = self._f
        if self.created:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["kinds"] = json.dumps(list(KINDS))
            f.attrs["statuses"] = json.dumps(list(STATUSES))
            f.create_dataset("ops", shape=(CHUNK,), maxshape=(None,), dtype=ROW, chunks=(CHUNK,))
            f.create_dataset("params", shape=(PARAM_CHUNK,), maxshape=(None,), dtype="u1", chunks=(PARAM_CHUNK,))
            f.create_dataset("sessions", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(16,))
            f.flush()
        elif f.attrs.get("format") != FORMAT:
            f.close()
            raise ValueError(f"{self.path}: not a crossbar_ctl op log")
        self._ops, self._params = f["ops"], f["params"]
        self._ops_size, self._params_size = self._ops.shape[0], self._params.shape[0]
        self._mtype = h5t.py_create(ROW)
        self._btype = h5t.py_create(np.dtype("u1"))
        self._kinds: list[str] = json.loads(f.attrs["kinds"])
        self._kind_ix = {k: i for i, k in enumerate(self._kinds)}
        self._count = committed_rows(self._ops["seq"])
        last = self._ops[self._count - 1] if self._count else None
        self._p_end = int(last["p_off"]) + int(last["p_len"]) if last is not None else 0
        self.session = int(f["sessions"].shape[0])  # rows are tagged with this until begin_session()
        self.last_seq = int(last["seq"]) if last is not None else 0
        if not self.created:
            self._recover()

    def _recover(self) -> None:
        """Write the rows a process that died had only in its journal (see :mod:`crossbar_ctl.oplog_journal`)."""
        path = journal_path(self.path)
        for e in pending_entries(path, self._count):
            kind = self._kind_index(e["kind"])
            self._buf.append((e["seq"], e["time_s"], e["tile"], kind, _STATUS_IX[e["status"]], e["session"],
                              e["params"].encode()))
            self.last_seq = e["seq"]
            self.recovered += 1
        self.flush()
        path.unlink(missing_ok=True)

    def _kind_index(self, kind: str) -> int:
        ix = self._kind_ix.get(kind)
        if ix is None:  # a kind this log has not seen (a third-party backend): extend the name list
            ix = self._kind_ix[kind] = len(self._kinds)
            self._kinds.append(kind)
            self._f.attrs["kinds"] = json.dumps(self._kinds)
        return ix

    # ------------------------------------------------------------------ writing
    def record(self, rec: OpRecord) -> None:
        """The backend listener: buffer one operation (and flush every ``flush_every``). Arrays are copied
        (the caller may reuse its own); digests and JSON are made by :meth:`flush`, for many operations at once
        (interleaved with the array operations they slowed those down by more than their own cost), except that
        large arrays are hashed at once in a worker thread (hashlib releases the GIL)."""
        t0 = time.perf_counter()
        kind = self._kind_ix.get(rec.kind)
        if kind is None:
            kind = self._kind_index(rec.kind)
        status_name = getattr(rec, "status", "ok")
        status = _STATUS_IX[status_name]
        params = {}
        for k, v in rec.params.items():
            if type(v) is np.ndarray:
                if v.nbytes >= THREAD_HASH_BYTES and v.size > INLINE_MAX:
                    form = hash_form(v)
                    if self._pool is None:
                        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oplog-sha256")
                    v = _Digest(v.shape, v.dtype.str, form.dtype.str,
                                self._pool.submit(_sha256, v.copy() if form is v else form))
                else:
                    v = v.copy()
            params[k] = v
        now = time.time()
        row: Any = params
        if self.flush_every > 1 and self.journal:  # buffered: journal it at once (crossbar_ctl.oplog_journal)
            text, pending = self._encode_now(params)
            if self._journal is None:
                self._journal = Journal(journal_path(self.path))
            self._journal.append(encode_entry(self._count + len(self._buf), rec.seq, now, rec.tile, rec.kind,
                                              status_name, self.session, text))
            if not pending:
                row = text.encode()  # final already: the flush writes it as it is
        self._buf.append((rec.seq, now, rec.tile, kind, status, self.session, row))
        self.last_seq = rec.seq
        self.busy_s += time.perf_counter() - t0
        if len(self._buf) >= self.flush_every:
            self.flush()

    __call__ = record

    @staticmethod
    def _encode(params: dict[str, Any]) -> bytes:
        """The JSON bytes of ``params``, built by hand (a third of the time of json.dumps on nested dicts)."""
        return OpLog._encode_now(params, wait=True)[0].encode()

    @staticmethod
    def _encode_now(params: dict[str, Any], wait: bool = False) -> tuple[str, bool]:
        """The JSON text of ``params`` and whether a digest was still being computed (then ``null`` in the text,
        unless ``wait``)."""
        parts: list[str] = []
        pending = False
        for k, v in params.items():
            t = type(v)
            if t is float and math.isfinite(v):
                s = repr(v)
            elif t is int:
                s = str(v)
            elif t is str:
                s = _jstr(v)
            elif t is _Digest:
                if wait or v.sha256.done():
                    sha = f'"{v.sha256.result()}"'
                else:
                    sha, pending = "null", True
                s = f'{{"shape":{list(v.shape)},"dtype":"{v.dtype}","hashed_as":"{v.hashed_as}","sha256":{sha}}}'
            elif t is np.ndarray and v.size > INLINE_MAX:
                form = hash_form(v)
                s = (f'{{"shape":{list(v.shape)},"dtype":"{v.dtype.str}","hashed_as":"{form.dtype.str}",'
                     f'"sha256":"{_sha256(form)}"}}')
            else:
                s = _dumps(encode_param(v))
            parts.append(f"{_jstr(k)}:{s}")
        return "{" + ",".join(parts) + "}", pending

    def _resolve(self) -> None:
        """Turn the buffered parameter dicts into JSON bytes (waiting for digests still being computed)."""
        for i, row in enumerate(self._buf):
            if isinstance(row[6], dict):
                self._buf[i] = row[:6] + (self._encode(row[6]),)

    def flush(self, min_interval_s: float = 0.0) -> None:
        """Write the buffered rows and flush the file, unless the last flush is less than ``min_interval_s``
        ago. Safe to redo after an interruption."""
        if not self._buf or (min_interval_s > 0 and time.monotonic() - self._flushed_at < min_interval_s):
            return
        t0 = time.perf_counter()
        self._resolve()
        n0, k = self._count, len(self._buf)
        blob = b"".join(r[6] for r in self._buf)
        p0 = self._p_end
        rows = np.empty(k, dtype=ROW)
        off = p0
        for i, (seq, t, tile, kind, status, session, params) in enumerate(self._buf):
            rows[i] = (seq, t, tile, kind, status, session, off, len(params))
            off += len(params)
        if n0 + k > self._ops_size:
            self._ops_size = -(-(n0 + k) // CHUNK) * CHUNK
            self._ops.resize((self._ops_size,))
        if p0 + len(blob) > self._params_size:
            self._params_size = -(-(p0 + len(blob)) // PARAM_CHUNK) * PARAM_CHUNK
            self._params.resize((self._params_size,))
        if blob:
            self._write(self._params, p0, np.frombuffer(blob, dtype=np.uint8), self._btype)
        self._write(self._ops, n0, rows, self._mtype)  # the rows commit the parameters written before them
        h5f.flush(self._f.id)
        self._count, self._p_end = n0 + k, off
        self._buf.clear()
        if self._journal is not None:
            self._journal.clear()  # everything it held is in the file now
        self._flushed_at = time.monotonic()
        self.busy_s += time.perf_counter() - t0

    @staticmethod
    def _write(ds: h5py.Dataset, start: int, data: np.ndarray, mtype: Any) -> None:
        fspace = ds.id.get_space()
        fspace.select_hyperslab((start,), (len(data),))
        ds.id.write(h5s.create_simple((len(data),)), fspace, data, mtype=mtype)

    def begin_session(self, mode: str, **info: Any) -> int:
        """Start a session (``mode`` e.g. "new" or "resume", plus notes); later rows carry its number."""
        self.flush()
        ds = self._f["sessions"]
        n = ds.shape[0]
        ds.resize((n + 1,))
        ds[n] = json.dumps({"session": n, "time_s": time.time(), "mode": mode, "first_row": self._count, **info})
        self._f.flush()
        self.session = n
        return n

    def truncate_after(self, seq: int) -> int:
        """Drop every row with sequence number > ``seq`` (a simulator restored from a checkpoint: those
        operations no longer happened). Returns how many rows were dropped."""
        self.flush()
        seqs = self._ops["seq"][: self._count]
        keep = int(np.count_nonzero(seqs <= seq))
        if not np.all(seqs[:keep] <= seq):
            raise ValueError(f"{self.path}: sequence numbers are not in order; cannot cut the log at {seq}")
        dropped = self._count - keep
        if dropped:
            self._ops[keep:self._count] = np.zeros(dropped, dtype=ROW)
            self._f.flush()
            self._count = keep
            last = self._ops[keep - 1] if keep else None
            self._p_end = int(last["p_off"]) + int(last["p_len"]) if last is not None else 0
        self.last_seq = int(seqs[keep - 1]) if keep else 0
        return dropped

    @property
    def count(self) -> int:
        """Rows written or buffered."""
        return self._count + len(self._buf)

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if not self._f:
            return
        try:
            self.flush()
            self._f.attrs["count"] = self._count  # informative only: readers count rows with seq > 0
            if self._journal is not None:
                self._journal.close(remove=True)
                self._journal = None
        finally:
            self._f.close()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> "OpLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- reading
def read_log(path: str | Path) -> dict[str, Any]:
    """Everything in a log: ``ops`` (structured array), ``kind``/``status`` names per row, ``params`` (JSON
    strings), ``sessions`` (dicts)."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path}: not a crossbar_ctl op log")
        n = committed_rows(f["ops"]["seq"])
        ops = f["ops"][:n]
        kinds = json.loads(f.attrs["kinds"])
        statuses = json.loads(f.attrs["statuses"])
        end = int(ops["p_off"][-1]) + int(ops["p_len"][-1]) if n else 0
        blob = f["params"][:end].tobytes()
        params = [blob[o:o + n_].decode() for o, n_ in zip(ops["p_off"].tolist(), ops["p_len"].tolist())]
        sessions = [json.loads(s.decode() if isinstance(s, bytes) else s) for s in f["sessions"][:]]
    kind = [kinds[k] for k in ops["kind"]]
    status = [statuses[s] for s in ops["status"]]
    journal = pending_entries(journal_path(path), n)  # what a process that died had not flushed yet
    if journal:
        extra = np.zeros(len(journal), dtype=ROW)
        for i, e in enumerate(journal):
            if e["kind"] not in kinds:
                kinds.append(e["kind"])
            extra[i] = (e["seq"], e["time_s"], e["tile"], kinds.index(e["kind"]), statuses.index(e["status"]),
                        e["session"], 0, 0)
            kind.append(e["kind"])
            status.append(e["status"])
            params.append(e["params"])
        ops = np.concatenate([ops, extra])
    return {"ops": ops, "kind": kind, "status": status, "params": params, "sessions": sessions,
            "from_journal": len(journal)}
