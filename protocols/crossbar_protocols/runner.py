"""Running a protocol end to end: open the rig, check, measure, write DIR (HDF5, CSV, plots, op log).

:func:`run_protocol` is what ``crossbar-ctl protocol run`` calls; :func:`dry_run` checks a protocol against a
rig config and estimates it without opening the backend. Both apply the same checks (:meth:`Protocol.check`:
limits, energy, half-select, read mode), and :func:`run_protocol` applies them before it opens the backend or
creates any file, so a refused run leaves nothing behind. Random draws of a protocol (e.g. write-verify targets)
come from ``SeedSequence(seed, spawn_key=(7,))``, independent of the simulator's own stream.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from crossbar_ctl.backend import Backend, connect
from crossbar_ctl.config import RunConfig, config_to_dict, dump_toml
from crossbar_ctl.errors import CrossbarError
from crossbar_protocols.base import Protocol, ProtocolResult, normalize_cells
from crossbar_protocols.cells import parse_cells
from crossbar_protocols.results import package_versions, write_result

SPAWN_KEY = (7,)


def protocol_rng(seed: int) -> np.random.Generator:
    """The protocol's own random generator for a run seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=SPAWN_KEY))


def resolve_cells(protocol: Protocol, cells: str | np.ndarray | list | None,
                  tile_shapes: list[tuple[int, int]]) -> np.ndarray:
    """Cells from a spec string, an array of triples, or the protocol's default spec."""
    if cells is None:
        cells = protocol.default_cells
    if isinstance(cells, str):
        return parse_cells(cells, tile_shapes)
    return normalize_cells(cells, tile_shapes)


def dry_run(protocol: Protocol, config: RunConfig, cells: str | np.ndarray | None = None,
            op_time_s: dict[str, float] | None = None) -> dict[str, Any]:
    """Check cells and everything a real run checks (:meth:`Protocol.check`) and estimate operations and
    duration, without opening the backend. ``limits`` is "ok" or the refusal's message (``ok`` False)."""
    arr = resolve_cells(protocol, cells, config.array.shapes())
    out: dict[str, Any] = {"protocol": protocol.name, "cells": len(arr), "backend": config.backend.kind,
                           "params": protocol.params_dict()}
    try:
        protocol.check(config, arr)
        out["limits"] = "ok"
        out["ok"] = True
    except (CrossbarError, ValueError) as err:
        out["limits"] = str(err)
        out["ok"] = False
    out["estimate"] = protocol.estimate(arr, op_time_s, config.device)
    return out


@contextlib.contextmanager
def _progress(backend: Backend, total: int, enabled: bool, desc: str) -> Iterator[None]:
    if not enabled:
        yield
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="op", leave=False, smoothing=0.1)
    listener = lambda rec: bar.update(1)  # noqa: E731
    backend.add_listener(listener)
    try:
        yield
    finally:
        backend.remove_listener(listener)
        bar.close()


@contextlib.contextmanager
def _op_log(backend: Backend, out: Path | None, enabled: bool, protocol: Protocol) -> Iterator[None]:
    if out is None or not enabled:
        yield
        return
    from crossbar_ctl.oplog import FILENAME, OpLog

    out.mkdir(parents=True, exist_ok=True)
    log = OpLog(out / FILENAME, "w", flush_every=256)
    log.begin_session("protocol", protocol=protocol.name, params=protocol.params_dict())
    backend.add_listener(log.record)
    try:
        yield
    finally:
        backend.remove_listener(log.record)
        log.close()


def run_protocol(protocol: Protocol, config: RunConfig, cells: str | np.ndarray | None = None,
                 out_dir: str | Path | None = None, *, backend: Backend | None = None, progress: bool = False,
                 plots: bool = True, clock: Any = None) -> ProtocolResult:
    """Run ``protocol`` on the rig of ``config`` (or on an open ``backend``, left open) and, with ``out_dir``,
    write the result directory (result.h5, data.csv, summary.json, PNG plots, oplog.h5). Every check runs
    before the backend is opened and before any file is created."""
    out = Path(out_dir) if out_dir is not None else None
    rig = config if backend is None else backend.config
    shapes = rig.array.shapes() if backend is None else list(backend.tile_shapes)
    arr = resolve_cells(protocol, cells, shapes)
    protocol.check(rig, arr)  # before opening the backend, creating files or logs
    with contextlib.ExitStack() as stack:
        if backend is None:
            backend = stack.enter_context(connect(config))
        total = sum(protocol.estimate(arr, device=rig.device)["ops"].values())
        stack.enter_context(_op_log(backend, out, config.logging.op_log, protocol))
        stack.enter_context(_progress(backend, total, progress, protocol.name))
        result = protocol.run(backend, arr, protocol_rng(config.seed), clock=clock)
        result.meta.update({"config": config_to_dict(config), "config_toml": dump_toml(config),
                            "rig": backend.describe(), "versions": package_versions(), "seed": config.seed})
    if out is not None:
        write_result(result, out)
        if plots:
            from crossbar_protocols.plots import plot_result

            result.meta["plots"] = [p.name for p in plot_result(result, out)]
    return result
