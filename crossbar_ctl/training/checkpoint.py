"""Checkpoints: everything needed to resume a run without losing or repeating an update.

A checkpoint is one ``.npz`` file of named arrays plus a JSON ``meta`` entry (epoch, op counts, random
generator states). It is written to a temporary name and renamed, so a crash never leaves a half-written
checkpoint in place of a good one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def save_checkpoint(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Atomically write ``arrays`` and ``meta`` to ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(tmp, "wb") as fh:
        np.savez(fh, **payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; a damaged file raises ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint here")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
            meta = json.loads(bytes(z["__meta__"]).decode())
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: damaged checkpoint ({err})") from None
    return arrays, meta


def flatten_state(prefix: str, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Store a state dict of arrays and scalars under ``prefix/key`` names."""
    for k, v in state.items():
        arrays[f"{prefix}/{k}"] = np.asarray(v)


def unflatten_state(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`flatten_state` (0-d arrays come back as Python scalars)."""
    out: dict[str, Any] = {}
    start = prefix + "/"
    for k, v in arrays.items():
        if k.startswith(start):
            out[k[len(start):]] = v.item() if v.ndim == 0 else v
    return out
