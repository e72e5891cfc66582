"""The op log's journal (``DIR/oplog.h5.journal``): every operation the HDF5 file has not flushed yet, one
``os.write`` each, so that a process that dies loses at most the operation in flight.

An HDF5 flush costs ~0.2 ms, so the op log flushes its file at batch ends (:class:`~crossbar_ctl.oplog.OpLog`
with ``flush_every > 1``); until then its rows live in memory, and each is also appended here at once. A write
reaches the operating system before the next array operation starts: a killed process (SIGKILL, a crash in a
native library, the OOM killer) cannot lose it, while a machine that loses power may (the HDF5 file is not
fsynced either). After every HDF5 flush the journal is emptied.

An entry is a little-endian ``uint32`` byte count and then that many bytes of JSON:
``[row, seq, time_s, tile, kind, status, session, params]``, where ``row`` is the HDF5 row the operation is
to occupy, ``kind`` and ``status`` are names and ``params`` is the operation's parameter JSON, except that the
sha256 of a large array still being computed (in the op log's worker thread) is ``null``. Reading stops at the
first incomplete or unreadable entry: the operation in flight when the process died.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

SUFFIX = ".journal"
_LEN = struct.Struct("<I")


def journal_path(log_path: str | Path) -> Path:
    """Where the journal of the op log at ``log_path`` lives."""
    p = Path(log_path)
    return p.with_name(p.name + SUFFIX)


def encode_entry(row: int, seq: int, time_s: float, tile: int, kind: str, status: str, session: int,
                 params_json: str) -> bytes:
    """One journal entry (length prefix included); ``params_json`` is already JSON text."""
    body = (f"[{int(row)},{int(seq)},{float(time_s)!r},{int(tile)},{json.dumps(kind)},{json.dumps(status)},"
            f"{int(session)},{params_json}]").encode()
    return _LEN.pack(len(body)) + body


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """The complete entries of a journal (none if there is no file), in the order they were written."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    i = 0
    while i + _LEN.size <= len(data):
        (n,) = _LEN.unpack_from(data, i)
        body = data[i + _LEN.size:i + _LEN.size + n]
        if len(body) < n:
            break  # torn: the process died while writing it
        try:
            row, seq, time_s, tile, kind, status, session, params = json.loads(body)
        except (ValueError, TypeError):
            break
        out.append({"row": int(row), "seq": int(seq), "time_s": float(time_s), "tile": int(tile), "kind": str(kind),
                    "status": str(status), "session": int(session), "params": json.dumps(params,
                                                                                       separators=(",", ":"))})
        i += _LEN.size + n
    return out


def pending_entries(path: str | Path, committed: int) -> list[dict[str, Any]]:
    """The journal entries for rows from ``committed`` on (entries of rows already in the HDF5 file, left by a
    process that died between its flush and emptying the journal, are dropped); they must be consecutive rows."""
    entries = [e for e in read_journal(path) if e["row"] >= committed]
    for k, e in enumerate(entries):
        if e["row"] != committed + k:
            raise ValueError(f"{path}: journal row {e['row']} where row {committed + k} was expected")
    return entries


class Journal:
    """An open journal: :meth:`append` writes one entry with a single ``os.write``; :meth:`clear` empties it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.empty = os.fstat(self._fd).st_size == 0

    def append(self, entry: bytes) -> None:
        assert self._fd is not None, "journal is closed"
        view = memoryview(entry)
        while view:  # a regular file takes it in one write; loop only in case it does not
            view = view[os.write(self._fd, view):]
        self.empty = False

    def clear(self) -> None:
        """Empty the journal (after the HDF5 file has flushed everything it held)."""
        if self._fd is not None and not self.empty:
            os.ftruncate(self._fd, 0)
            self.empty = True

    def close(self, remove: bool = True) -> None:
        """Close the file and (by default, once everything is in the HDF5 file) remove it."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)
        if remove:
            self.path.unlink(missing_ok=True)
