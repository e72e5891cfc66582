"""Run a sweep's points on Dask: a LocalCluster of worker processes, or an existing scheduler.

Each point is an ordinary training run in ``OUT/<point>/`` (results.json, checkpoint, op log). A point whose
results.json is complete and holds the same config is skipped; one left unfinished (a sweep killed part way)
continues from its checkpoint; a failed point writes ``OUT/<point>/error.json``
(with the traceback) and the sweep goes on. ``OUT/sweep.json`` records the sweep and its points for ``report``.
While it runs, the ``distributed`` logger is held at WARNING (its INFO start-up/shutdown lines are noise here).
"""
from __future__ import annotations

import json
import logging
import os
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from crossbar_ctl.config import config_to_dict
from crossbar_ctl.errors import ConfigError
from crossbar_ctl.sweeps.spec import Point, SweepSpec

MANIFEST = "sweep.json"
ERROR_FILE = "error.json"
RESULTS_FILE = "results.json"
CHECKPOINT_FILE = "checkpoint.npz"  # the trainer's (crossbar_ctl.training.trainer)
#: environment of every local worker process: one BLAS/Numba thread each, so N workers fit N cores
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


@dataclass
class SweepSummary:
    """What a sweep did: point names per outcome, wall time and the dashboard address (if any)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    dashboard: str | None = None

    def line(self) -> str:
        return (f"{len(self.done)} done, {len(self.skipped)} skipped (already complete), {len(self.failed)} failed "
                f"in {self.seconds:.1f} s")


def refuse_instruments(points: list[Point], source: str) -> None:
    """Raise unless every point runs on the simulator (checked after each point's overrides)."""
    bad = [p for p in points if p.config.backend.kind != "sim"]
    if bad:
        p = bad[0]
        raise ConfigError(
            f"{source}: point {p.name} has backend.kind = {p.config.backend.kind!r} ({len(bad)} such point(s)): "
            "a sweep runs simulator backends only, since one array cannot run two points at once; "
            "run instrument points one at a time with `crossbar-ctl train`. Nothing was submitted.")


def _comparable(cfg_dict: dict[str, Any]) -> Any:
    return json.loads(json.dumps(cfg_dict))


def _results_of(config_dict: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """run_dir's results.json if it is readable and of exactly this config, else None."""
    try:
        res = json.loads((run_dir / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return res if isinstance(res, dict) and res.get("config") == _comparable(config_dict) else None


def is_complete(point: Point, run_dir: Path) -> bool:
    """True if run_dir holds a complete results.json of exactly this point's config."""
    res = _results_of(config_to_dict(point.config), run_dir)
    return res is not None and bool(res.get("complete"))


def resumable(config_dict: dict[str, Any], run_dir: Path) -> bool:
    """True if run_dir holds an unfinished run of exactly this config with a checkpoint to continue from (a
    sweep killed part way): the point resumes there instead of starting over."""
    if not (run_dir / CHECKPOINT_FILE).is_file():
        return False
    res = _results_of(config_dict, run_dir)
    return res is not None and res.get("complete") is False


def write_error(run_dir: Path, name: str, overrides: dict[str, Any], err: BaseException | str,
                tb: str = "") -> dict[str, Any]:
    """Record a failed point in run_dir/error.json; returns the record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "point": name,
        "overrides": overrides,
        "error_type": type(err).__name__ if isinstance(err, BaseException) else "error",
        "error": str(err),
        "traceback": tb,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": os.uname().nodename,
    }
    (run_dir / ERROR_FILE).write_text(json.dumps(record, indent=2))
    return record


def run_point(name: str, data: dict[str, Any], overrides: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Train one point (runs on a worker), continuing an unfinished run of it from its checkpoint
    (:func:`resumable`). Never raises for a failed run: it records error.json and reports it."""
    from crossbar_ctl.config import config_from_dict
    from crossbar_ctl.training.trainer import Trainer

    out = Path(run_dir)
    (out / ERROR_FILE).unlink(missing_ok=True)
    start = time.perf_counter()
    resume = False
    try:
        cfg = config_from_dict(data, source=f"point {name}")
        resume = resumable(config_to_dict(cfg), out)
        res = Trainer(cfg, out, progress=False).run(resume=resume)
    except Exception as err:  # a failed point must not stop the sweep
        rec = write_error(out, name, overrides, err, traceback.format_exc())
        return {"name": name, "status": "failed", "error": f"{rec['error_type']}: {rec['error']}"}
    return {"name": name, "status": "done", "seconds": time.perf_counter() - start, "resumed": resume,
            "final_test_accuracy": res.get("final_test_accuracy")}


def write_manifest(spec: SweepSpec, points: list[Point], out: Path) -> None:
    """OUT/sweep.json: the sweep file, its float ceiling and every point (name, group, seed, overrides)."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "sweep_file": str(Path(spec.source).resolve()),
        "name": spec.name,
        "float_ceiling": spec.float_ceiling,
        "axes": list(spec.axes),
        "points": [p.manifest() for p in points],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))


def open_client(scheduler: str | None, workers: int) -> tuple[Any, Any]:
    """A Dask client: connected to ``scheduler``, or to a new LocalCluster of ``workers`` single-thread processes."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, env=dict(WORKER_ENV),
                           dashboard_address=":0", silence_logs=logging.ERROR)
    return Client(cluster), cluster


def dashboard_of(client: Any) -> str | None:
    """The scheduler's dashboard address, if it serves one."""
    try:
        if "dashboard" in client.scheduler_info().get("services", {}):
            import importlib.util

            hint = "" if importlib.util.find_spec("bokeh") else " (its pages need bokeh installed)"
            return f"{client.dashboard_link}{hint}"
    except Exception:  # pragma: no cover - informational only
        return None
    return None


def run_sweep(spec: SweepSpec, points: list[Point], out: str | Path, scheduler: str | None = None,
              workers: int = 2, progress: bool = True, echo: Callable[[str], None] = print) -> SweepSummary:
    """Run every point not already complete; failures are recorded, not raised. Returns the summary."""
    out = Path(out)
    refuse_instruments(points, spec.source)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    summary = SweepSummary()
    start = time.perf_counter()
    write_manifest(spec, points, out)
    todo = []
    for p in points:
        if is_complete(p, out / p.name):
            summary.skipped.append(p.name)
        else:
            todo.append(p)
    if summary.skipped:
        echo(f"{len(summary.skipped)} of {len(points)} points already complete: skipped")
    if not todo:
        summary.seconds = time.perf_counter() - start
        return summary
    with quiet_distributed():
        _run_todo(todo, out, scheduler, workers, progress, echo, summary)
    summary.seconds = time.perf_counter() - start
    return summary


@contextmanager
def quiet_distributed(level: int = logging.WARNING) -> Iterator[None]:
    """Raise the ``distributed`` logger to at least ``level`` for the block, then restore it.

    Dask logs cluster start-up and shutdown at INFO; with the CLI's root handler that is ~50 lines a sweep.
    Importing distributed sets that level, so it is imported first."""
    import distributed  # noqa: F401  (configures its loggers on first import)

    logger = logging.getLogger("distributed")
    old = logger.level
    if old < level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def _run_todo(todo: list[Point], out: Path, scheduler: str | None, workers: int, progress: bool,
              echo: Callable[[str], None], summary: SweepSummary) -> None:
    """Submit ``todo`` to the cluster and record each outcome in ``summary`` as it completes."""
    from dask.distributed import as_completed

    client, cluster = open_client(scheduler, workers)
    try:
        summary.dashboard = dashboard_of(client)
        where = scheduler or f"a local cluster of {workers} worker process(es)"
        echo(f"running {len(todo)} point(s) on {where}" +
             (f"; dashboard: {summary.dashboard}" if summary.dashboard else ""))
        futures = {client.submit(run_point, p.name, p.data, p.overrides, str((out / p.name).resolve()),
                                 key=f"sweep-point-{p.name}-{time.time_ns()}", pure=False): p for p in todo}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(futures), desc="points", unit="point")
        try:
            for fut in as_completed(futures):
                p = futures[fut]
                try:
                    res = fut.result()
                except Exception as err:  # the worker died or the task could not run at all
                    write_error(out / p.name, p.name, p.overrides, err, traceback.format_exc())
                    res = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
                if res["status"] == "done":
                    summary.done.append(p.name)
                else:
                    summary.failed.append(p.name)
                    msg = f"point {p.name} failed: {res['error']}"
                    (bar.write if bar is not None else echo)(msg)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            pending = [fut for fut in futures if not fut.done()]  # only after an interrupt
            if pending:
                client.cancel(pending)
            futures.clear()  # release the finished results before the client goes
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
