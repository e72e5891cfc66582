"""What ``crossbar-ctl log show`` prints about an op log: operations per kind and status, the sequence check
(gaps, duplicates, order), the time span, the sessions and the first and last entries."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from crossbar_ctl.oplog import read_log


def check_sequence(seqs: np.ndarray) -> dict[str, Any]:
    """Gaps and duplicates of a sequence-number column (expected: consecutive, starting at its first value)."""
    seqs = np.asarray(seqs, dtype=np.int64)
    if seqs.size == 0:
        return {"first": None, "last": None, "duplicates": [], "missing": [], "out_of_order": 0, "ok": True}
    uniq, counts = np.unique(seqs, return_counts=True)
    dups = uniq[counts > 1].tolist()
    full = np.arange(int(uniq[0]), int(uniq[-1]) + 1)
    missing = np.setdiff1d(full, uniq, assume_unique=True).tolist()
    disorder = int(np.count_nonzero(np.diff(seqs) <= 0))
    return {"first": int(seqs[0]), "last": int(seqs[-1]), "duplicates": dups, "missing": missing,
            "out_of_order": disorder, "ok": not dups and not missing and disorder == 0}


def summarize(path: str | Path) -> dict[str, Any]:
    """What ``crossbar-ctl log show`` prints: ops per kind, seq range, gaps/duplicates, time span, first and
    last entries, sessions."""
    log = read_log(path)
    ops = log["ops"]
    per_kind: dict[str, int] = {}
    for k in log["kind"]:
        per_kind[k] = per_kind.get(k, 0) + 1
    per_status: dict[str, int] = {}
    for s in log["status"]:
        per_status[s] = per_status.get(s, 0) + 1

    def entry(i: int) -> dict[str, Any]:
        return {"seq": int(ops["seq"][i]), "time_s": float(ops["time_s"][i]), "tile": int(ops["tile"][i]),
                "kind": log["kind"][i], "status": log["status"][i], "session": int(ops["session"][i]),
                "params": json.loads(log["params"][i])}

    n = len(ops)
    span = float(ops["time_s"][-1] - ops["time_s"][0]) if n else 0.0
    return {"path": str(path), "operations": n, "from_journal": log["from_journal"], "per_kind": per_kind,
            "per_status": per_status,
            "sequence": check_sequence(ops["seq"]), "time_span_s": span,
            "first_time_s": float(ops["time_s"][0]) if n else None, "sessions": log["sessions"],
            "first": [entry(i) for i in range(min(3, n))], "last": [entry(i) for i in range(max(0, n - 3), n)]}


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable form of :func:`summarize`."""
    seq = s["sequence"]
    lines = [f"op log {s['path']}: {s['operations']} operations in {len(s['sessions'])} session(s)"]
    if s["operations"]:
        lines.append(f"  sequence numbers {seq['first']}..{seq['last']}: "
                     + ("consecutive, no gaps or duplicates" if seq["ok"] else
                        f"{len(seq['missing'])} missing {_few(seq['missing'])}, {len(seq['duplicates'])} "
                        f"duplicated {_few(seq['duplicates'])}, {seq['out_of_order']} out of order"))
        if s.get("from_journal"):
            lines.append(f"  {s['from_journal']} of them only in the journal (the process that wrote them died before "
                         "flushing; the next append writes them to the file)")
        t0 = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["first_time_s"]))
        lines.append(f"  time span {s['time_span_s']:.3f} s from {t0}")
    lines.append("  per kind: " + ", ".join(f"{k} {v}" for k, v in sorted(s["per_kind"].items())))
    lines.append("  per status: " + ", ".join(f"{k} {v}" for k, v in sorted(s["per_status"].items())))
    for sess in s["sessions"]:
        extra = {k: v for k, v in sess.items() if k not in ("session", "time_s", "mode", "first_row")}
        lines.append(f"  session {sess['session']} ({sess['mode']}) from row {sess['first_row']}"
                     + (f": {json.dumps(extra)}" if extra else ""))
    for title in ("first", "last"):
        for e in s[title]:
            lines.append(f"  {title:5s} seq {e['seq']:>8d} {e['kind']:<16s} tile {e['tile']} {e['status']:<5s} "
                         f"{_short(e['params'])}")
    return "\n".join(lines)


def _few(items: list[int]) -> str:
    return "" if not items else "(" + ", ".join(map(str, items[:5])) + (", ..." if len(items) > 5 else "") + ")"


def _short(params: dict[str, Any]) -> str:
    out = []
    for k, v in params.items():
        if isinstance(v, dict) and "sha256" in v:
            sha = v["sha256"][:12] if v["sha256"] else "lost"
            v = f"[{np.dtype(v['dtype']).name} {'x'.join(map(str, v['shape']))} sha256:{sha}]"
        elif isinstance(v, dict) and "values" in v:
            v = v["values"]
        out.append(f"{k}={v}")
    return " ".join(out)
