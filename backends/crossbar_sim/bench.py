"""Simulator benchmark: ``bench_sim() -> dict`` (also ``python -m crossbar_sim.bench``).

Per tile shape (default: 1024×1024 and the 784-100-10 MLP tiles with differential pairs, 785×200 and 101×20, plus
785×100 and 101×10), with the agsi preset and a warmed-up (compiled) simulator:

* ``read_vmm``: time per 64-vector batch through the public method and through the hook, and their ratio to a
  plain numpy float32 matmul of the same shape (goal ≤ 1.5, noise off); the same for ``read_vmm_t``. Both run
  under the simulator's BLAS policy (one thread; every core for products of ≥ 5e7 flops, :mod:`crossbar_ctl.blas`).
* ``program``: device updates per second with every device a nonzero count (goal ≥ 5e7 on 2 cores) and the
  ratio to the same arithmetic as vectorised numpy (:func:`program_numpy`, goal ≥ 3).
* ``outer_pulse``: stochastic phases per second, slots = 32, half the rows and a quarter of the columns active
  with drives ~ U(0, 1).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any, Callable

import numba
import numpy as np

from crossbar_ctl.blas import WIDE_MIN_FLOPS, wide
from crossbar_ctl.config import config_from_dict
from crossbar_sim.backend import SimBackend
from crossbar_sim.device_arrays import DeviceArrays, pulse_scale

DEFAULT_SHAPES = ((1024, 1024), (785, 200), (101, 20), (785, 100), (101, 10))
GOALS = {"read_vmm_ratio_max": 1.5, "program_updates_per_s_min": 5e7, "program_speedup_vs_numpy_min": 3.0}


def _time(fn: Callable[[], Any], min_time_s: float, ref: Callable[[], Any] | None = None) -> Any:
    """Best mean time per call (s) over 7 rounds of ~min_time_s/7 each, after ~min_time_s/2 of warm-up.
    With ``ref``, rounds of ``fn`` and ``ref`` alternate (so that both see the same machine state) and the pair
    (t_fn, t_ref) is returned."""
    fns = [fn] if ref is None else [fn, ref]
    n = []
    for f in fns:
        f()
        t0 = time.perf_counter()
        k = 0
        while time.perf_counter() - t0 < min_time_s / 2 or k < 2:
            f()
            k += 1
        n.append(max(1, int(k * min_time_s / 7 / (time.perf_counter() - t0))))
    best = [float("inf")] * len(fns)
    for _ in range(7):
        for idx, f in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(n[idx]):
                f()
            best[idx] = min(best[idx], (time.perf_counter() - t0) / n[idx])
    return best[0] if ref is None else (best[0], best[1])


def program_numpy(g: np.ndarray, counts: np.ndarray, dev: DeviceArrays, s_up: float, s_down: float, sigma: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The program update written as vectorised numpy (the reference of the speed-up): returns (G, float32 G)."""
    up = counts > 0
    neff = np.where(up, counts * s_up, -counts * s_down)
    a = np.where(up, dev.a_up, dev.a_down)
    b = np.where(up, dev.b_up, dev.b_down)
    if not dev.linear_up and not dev.linear_down:
        gn = a - (a - g) * np.exp(-neff * b)
    else:
        lin = np.where(up, dev.linear_up, dev.linear_down)
        gn = np.where(lin, g + neff * a, a - (a - g) * np.exp(-neff * b))
    gn += sigma * (dev.g_max - dev.g_min) * np.sqrt(neff) * rng.standard_normal(g.shape)
    np.clip(gn, dev.g_min, dev.g_max, out=gn)
    gn = np.where(counts != 0, gn, g)
    return gn, gn.astype(np.float32)


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "(not initialised)"
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": layer,
        "numba": numba.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _backend(rows: int, cols: int, seed: int) -> SimBackend:
    cfg = config_from_dict({"seed": seed, "array": {"tiles": 1, "rows": rows, "cols": cols},
                            "device": {"preset": "agsi"}})
    return SimBackend(cfg)


def bench_shape(rows: int, cols: int, batch: int = 64, seed: int = 0, min_time_s: float = 0.25) -> dict[str, Any]:
    """All measurements of one tile shape."""
    rng = np.random.default_rng(seed)
    b = _backend(rows, cols, seed)
    out: dict[str, Any] = {"shape": [rows, cols], "batch": batch}

    # bring the tile into a mid-window state so that reads and writes are representative
    b.program(0, np.full((rows, cols), 40, dtype=np.int32))
    g32 = b.true_conductance(0).astype(np.float32)
    v = rng.uniform(-0.2, 0.2, (batch, rows)).astype(np.float32)
    vt = rng.uniform(-0.2, 0.2, (batch, cols)).astype(np.float32)
    flops = 2.0 * batch * rows * cols

    def ref(a: np.ndarray, m: np.ndarray) -> Callable[[], Any]:
        if flops < WIDE_MIN_FLOPS:  # the numpy matmul gets the simulator's thread policy: one thread here
            return lambda: np.dot(a, m)  # (no context manager around it: it would cost 0.2 µs of a 4 µs product)

        def run() -> Any:
            with wide(flops):  # every core for a large product
                return np.dot(a, m)
        return run

    t_pub, t_np = _time(lambda: b.read_vmm(0, v), min_time_s, ref=ref(v, g32))
    t_hook = _time(lambda: b._read_vmm(0, v), min_time_s)
    t_pub_t, t_np_t = _time(lambda: b.read_vmm_t(0, vt), min_time_s, ref=ref(vt, g32.T))
    out["read_vmm"] = {"time_s": t_pub, "hook_time_s": t_hook, "numpy_matmul_time_s": t_np,
                       "ratio": t_pub / t_np, "hook_ratio": t_hook / t_np}
    out["read_vmm_t"] = {"time_s": t_pub_t, "numpy_matmul_time_s": t_np_t, "ratio": t_pub_t / t_np_t}

    sign = np.where(rng.random((rows, cols)) < 0.5, -1, 1)
    counts = (sign * rng.integers(1, 21, (rows, cols))).astype(np.int32)
    g = b.true_conductance(0)
    d = b.device_arrays(0)
    s_up = pulse_scale(b.device, 2.0, 1e-6)
    s_dn = pulse_scale(b.device, -2.0, 1e-6)
    nrng = np.random.default_rng(seed)
    t_prog, t_ref = _time(lambda: b.program(0, counts), min_time_s,
                          ref=lambda: program_numpy(g, counts, d, s_up, s_dn, b.device.sigma_c2c, nrng))
    t_hook = _time(lambda: b._program(0, counts, 2.0, -2.0, 1e-6), min_time_s)
    n = rows * cols
    out["program"] = {"time_s": t_prog, "hook_time_s": t_hook, "updates_per_s": n / t_prog,
                      "numpy_time_s": t_ref, "numpy_updates_per_s": n / t_ref, "speedup_vs_numpy": t_ref / t_prog}

    p = np.zeros(rows)
    q = np.zeros(cols)
    ri = rng.permutation(rows)[: max(1, rows // 2)]
    ci = rng.permutation(cols)[: max(1, cols // 4)]
    p[ri] = rng.random(ri.size)
    q[ci] = rng.random(ci.size)
    t_outer = _time(lambda: b.outer_pulse(0, p, q, 1, 32), min_time_s)
    t_outer_e = _time(lambda: b.outer_pulse(0, p, q, -1, 32, mode="expected"), min_time_s)
    active = ri.size * ci.size
    out["outer_pulse"] = {"slots": 32, "active_devices": active, "time_s": t_outer, "phases_per_s": 1.0 / t_outer,
                          "ns_per_active_device": t_outer / active * 1e9,
                          "expected_mode_phases_per_s": 1.0 / t_outer_e}
    return out


def warm_up() -> None:
    """Compile (or load from the cache) every kernel with a tiny simulator."""
    cfg = config_from_dict({"array": {"tiles": 1, "rows": 4, "cols": 3},
                            "device": {"preset": "agsi", "half_select_disturb": 0.1}})
    b = SimBackend(cfg)
    b.program(0, np.ones((4, 3), dtype=np.int32))
    b.outer_pulse(0, np.full(4, 0.5), np.full(3, 0.5), 1, 4)
    b2 = _backend(4, 3, 0)
    b2.program(0, np.ones((4, 3), dtype=np.int32))
    b2.outer_pulse(0, np.full(4, 0.5), np.full(3, 0.5), 1, 4)
    b2.outer_pulse(0, np.full(4, 0.5), np.full(3, 0.5), -1, 4, mode="expected")
    b2.read_vmm(0, np.zeros((2, 4), dtype=np.float32))


def bench_sim(shapes: tuple[tuple[int, int], ...] | None = None, batch: int = 64, seed: int = 0,
              min_time_s: float | None = None, quick: bool = False) -> dict[str, Any]:
    """Benchmark the simulator (see the module docstring); returns a JSON-able dict. ``quick`` times each
    measurement for ~0.05 s instead of ~0.25 s (``min_time_s`` overrides both)."""
    if min_time_s is None:
        min_time_s = 0.05 if quick else 0.25
    t0 = time.perf_counter()
    warm_up()
    compile_s = time.perf_counter() - t0
    results = [bench_shape(r, c, batch, seed, min_time_s) for r, c in (shapes or DEFAULT_SHAPES)]
    return {"machine": _machine(), "goals": GOALS, "warm_up_s": compile_s, "tiles": results}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter timings")
    args = ap.parse_args(argv)
    print(json.dumps(bench_sim(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
