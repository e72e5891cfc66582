"""``crossbar-ctl train --dry-run``: check a whole run and estimate what it will ask of the array, without
opening the backend.

Checks (errors stop the run before it starts; warnings are worth reading):

* the config (already validated when loaded), the backend kind (installed) and its address (instruments);
* the data set (loaded, with its limits) and the compressor settings (built exactly as the trainer builds them);
* layer/tile fit: one tile per layer, ``n_in`` rows and ``2·n_out`` columns (differential pairs);
* limits: every line voltage (reads at ``v_read_V``, pulses at ``v_set_V``/``v_reset_V``, half-selected lines
  at V/2) within ``max_voltage_V``; worst-case column currents within ``compliance_current_A`` (as the
  controller checks); pulses per device per operation: a rank-seq phase gives at most ``outer_slots``, the
  initial programming of one device (estimated for He-initialised weights up to 4σ, and in the worst case
  across the window), the rank-sum/MBGD update per unit gradient element (``lr/dw``); energy per operation.

Operation counts per epoch are upper bounds from the method, rank, mode and batch size: per batch one
``read_vmm`` per layer and one ``read_vmm_t`` per layer but the first; per layer and batch either one
``program`` (MBGD, rank-sum; at most ``n_in`` rows) or the rank-seq phases of the emitted factor pairs (a
signed pair needs up to 4 sign-quadrant phases, a non-negative one 1: SGD pairs have non-negative inputs, NMF
pairs are single-signed); a phase needing more than ``outer_slots`` pulses at one device is split (not
counted). Evaluation reads the test set in chunks of 1000.

Duration = Σ operations × time per operation (:data:`DEFAULT_OP_TIME_S`, or the backend's
``Capabilities.op_time_s`` when a caller has one, or ``--op-time KIND=SECONDS``) + the pulse trains of the
rank-seq phases (``outer_slots × width_s`` each) + for kind ``serial`` the payload bytes at ``baud`` (10 or 11
bits a byte; not for a pseudo-terminal, which has no line rate). The defaults describe a lab tester on a LAN: ~1 ms per
command round trip, a few ms to program a tile row by row or read every device back.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crossbar_ctl.config import RunConfig
from crossbar_ctl.errors import ConfigError

#: Seconds per operation when the backend gives none (a LAN tester: round trip + settling + conversion).
DEFAULT_OP_TIME_S: dict[str, float] = {
    "read_vmm": 1e-3,
    "read_vmm_t": 1e-3,
    "outer_pulse": 1e-3,
    "program": 5e-3,
    "read_conductance": 5e-3,
}
EVAL_CHUNK = 1000  # test samples per read_vmm in evaluation (CrossbarMLP.predict)
INSTRUMENT_KINDS = ("visa", "serial", "smu-matrix")


@dataclass
class DryRun:
    """What a dry run found: ``errors`` (the run would fail), ``warnings``, counts, estimates."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.errors, "warnings": self.warnings, **self.info}


def _pairs_and_quadrants(method: str, rank: int) -> tuple[int, int]:
    """(factor pairs per layer and batch, sign-quadrant phases per pair at most)."""
    if method == "sgd":
        return 1, 2  # u = x >= 0 (pixels, ReLU outputs, bias 1); delta signed
    if method == "nmf":
        return 2 * rank, 1  # W (H+ - H-)^T split into 2k single-signed pairs
    return rank, 4  # svd, streaming-pca: signed pairs


def _check_backend(cfg: RunConfig, out: DryRun) -> None:
    from crossbar_ctl.backend import backend_class

    try:
        backend_class(cfg.backend.kind)
    except Exception as err:  # unknown kind or broken plugin
        out.errors.append(str(err))
        return
    if cfg.backend.kind in INSTRUMENT_KINDS and not cfg.backend.address:
        out.errors.append(f'[backend].address: kind "{cfg.backend.kind}" needs an address')


def _check_limits(cfg: RunConfig, sizes: list[tuple[int, int]], out: DryRun) -> dict[str, Any]:
    dev, lim, pulse, t = cfg.device, cfg.limits, cfg.pulse, cfg.training
    v_pulse = max(abs(pulse.v_set_V), abs(pulse.v_reset_V))
    peaks = {"read_V": cfg.read.v_read_V, "set_V": pulse.v_set_V, "reset_V": pulse.v_reset_V,
             "half_select_V": v_pulse / 2, "max_voltage_V": lim.max_voltage_V}
    for name, v in (("read.v_read_V", cfg.read.v_read_V), ("pulse.v_set_V", pulse.v_set_V),
                    ("pulse.v_reset_V", pulse.v_reset_V)):
        if abs(v) > lim.max_voltage_V:
            out.errors.append(f"{name} = {v:g} V exceeds limits.max_voltage_V = {lim.max_voltage_V:g} V")
    currents = []
    for l, (n_in, _) in enumerate(sizes):
        for what, v in (("read", cfg.read.v_read_V), ("pulse", v_pulse)):
            i = v * dev.g_max_S * n_in
            currents.append(i)
            if i > lim.compliance_current_A:
                out.errors.append(f"worst-case column {what} current of layer {l} ({n_in} rows at {v:g} V, Gmax "
                                  f"{dev.g_max_S:g} S) is {i:g} A > limits.compliance_current_A = "
                                  f"{lim.compliance_current_A:g} A")
    g_scale = dev.g_range_S / (2.0 * t.weight_range)
    g_ref = dev.symmetry_point_S()
    step = dev.step_S(g_ref)[0]
    dw = step / g_scale
    n_ref = float(np.abs(dev.pulses_between(dev.g_min_S, g_ref)))  # G- from Gmin (fresh devices) to G_s
    sigma_w = max(math.sqrt(2.0 / max(n - 1, 1)) for n, _ in sizes)
    top = min(g_ref + 4 * sigma_w * g_scale, dev.g_max_S - step)
    n_init = max(n_ref, float(np.abs(dev.pulses_between(dev.g_min_S, top))))
    n_worst = float(np.abs(dev.pulses_between(dev.g_min_S, dev.g_max_S - step)))
    per_grad = t.learning_rate / dw
    pulses = {"outer_phase_max": t.outer_slots if t.mode == "rank-seq" and t.method not in ("mbgd",) else 0,
              "initial_programming_estimate": math.ceil(n_init), "initial_programming_worst": math.ceil(n_worst),
              "update_per_unit_gradient": per_grad, "max_pulses_per_device": lim.max_pulses_per_device}
    if pulses["outer_phase_max"] > lim.max_pulses_per_device:
        out.errors.append(f"training.outer_slots = {t.outer_slots} exceeds limits.max_pulses_per_device = "
                          f"{lim.max_pulses_per_device} (every rank-seq phase would be refused)")
    if n_init > lim.max_pulses_per_device:
        out.errors.append(f"initial programming needs ~{math.ceil(n_init)} pulses on one device > "
                          f"limits.max_pulses_per_device = {lim.max_pulses_per_device}")
    elif n_worst > lim.max_pulses_per_device:
        out.warnings.append(f"initial programming of a weight at the edge of the window needs {math.ceil(n_worst)}"
                            f" pulses > limits.max_pulses_per_device = {lim.max_pulses_per_device}")
    if (t.method == "mbgd" or t.mode == "rank-sum") and per_grad > lim.max_pulses_per_device:
        out.warnings.append(f"a gradient element of 1 asks for {per_grad:.0f} pulses (lr/dw) > "
                            f"limits.max_pulses_per_device: large gradients will raise LimitError")
    energy = 0.0
    if t.mode == "rank-seq" and t.method != "mbgd":
        n_in, n_out = max(sizes, key=lambda s: s[0] * s[1])
        energy = t.outer_slots * n_in * n_out * v_pulse ** 2 * dev.g_max_S * pulse.width_s
        if energy > lim.max_energy_per_op_J:
            out.warnings.append(f"a rank-seq phase firing every device of the largest layer would need {energy:g} J"
                                f" > limits.max_energy_per_op_J = {lim.max_energy_per_op_J:g} J (refused if so)")
    return {"voltages_V": peaks, "worst_column_current_A": max(currents) if currents else 0.0,
            "pulses_per_device": pulses, "worst_phase_energy_J": energy, "dw_weight_per_pulse": dw}


def count_ops(cfg: RunConfig, sizes: list[tuple[int, int]], n_train: int, n_test: int) -> dict[str, Any]:
    """Upper bounds on the array operations of one epoch and of the initial programming."""
    t = cfg.training
    L = len(sizes)
    n_batches = -(-n_train // t.batch_size)
    eval_ops = -(-n_test // EVAL_CHUNK) * L
    dense = t.method == "mbgd" or t.mode == "rank-sum"
    epoch: dict[str, int] = {
        "read_vmm": n_batches * L + eval_ops,
        "read_vmm_t": n_batches * (L - 1),
        "outer_pulse": 0,
        "program": n_batches * L if dense else 0,
        "read_conductance": 0,
    }
    phases_per_batch = 0
    if not dense:
        pairs, quadrants = _pairs_and_quadrants(t.method, t.rank)
        phases_per_batch = L * pairs * quadrants  # (the compressors refuse ranks beyond a layer's size)
        epoch["outer_pulse"] = n_batches * phases_per_batch
    vectors = n_train * L + n_train * (L - 1) + n_test * L
    iters = 6 if t.write_verify else 1
    init = {"read_conductance": L * (1 + iters), "program": L * iters}
    # bytes on the wire (payloads as the driver sends them: whole tiles; F32 reads, F64 drives, I16 counts)
    tiles = cfg.array.shapes()[:L]
    wire = 4 * (n_train + n_test) * sum(r + c for r, c in tiles)  # forward reads: voltages out, currents back
    wire += 4 * n_train * sum(r + c for r, c in tiles[1:])  # transpose reads
    wire += n_batches * (sum(2 * r * c for r, c in tiles) if dense else
                         phases_per_batch // max(L, 1) * sum(8 * (r + c) for r, c in tiles))
    return {"batches_per_epoch": n_batches, "per_epoch": epoch, "vectors_read_per_epoch": vectors,
            "row_programs_per_epoch": n_batches * sum(n for n, _ in sizes) if dense else 0,
            "phases_per_batch": phases_per_batch, "initial_programming": init,
            "array_ops_per_epoch": sum(epoch.values()), "wire_bytes_per_epoch": wire}


def is_pseudo_terminal(address: str) -> bool:
    """Whether a serial address is (a link to) a pseudo-terminal slave, ``/dev/pts/N``: looked up in the file
    system only, nothing is opened."""
    if not address or "://" in address:
        return False
    try:
        return os.path.realpath(address).startswith("/dev/pts/")
    except (OSError, ValueError):
        return False


def estimate_duration(cfg: RunConfig, counts: dict[str, Any],
                      op_time_s: dict[str, float] | None = None) -> dict[str, Any]:
    """Seconds per epoch and for the whole run from the operation counts."""
    times = {**DEFAULT_OP_TIME_S, **(op_time_s or {})}
    per_epoch = sum(n * times.get(k, 0.0) for k, n in counts["per_epoch"].items())
    pulse_s = counts["per_epoch"]["outer_pulse"] * cfg.training.outer_slots * cfg.pulse.width_s
    init = sum(n * times.get(k, 0.0) for k, n in counts["initial_programming"].items())
    line_s = 0.0
    if cfg.backend.kind == "serial" and not is_pseudo_terminal(cfg.backend.address):
        # 1 start + 8 data (+ parity) + 1 stop bits per byte (a pseudo-terminal, e.g. the emulated tester's, has
        # no line rate: the baud setting does not slow it)
        bits = 10 + (cfg.backend.parity != "N")
        line_s = counts["wire_bytes_per_epoch"] * bits / cfg.backend.baud
    epoch_s = per_epoch + pulse_s + line_s
    return {"op_time_s": times, "epoch_s": epoch_s, "pulse_trains_s_per_epoch": pulse_s,
            "serial_line_s_per_epoch": line_s, "initial_programming_s": init,
            "run_s": init + cfg.training.epochs * epoch_s}


def dry_run(cfg: RunConfig, op_time_s: dict[str, float] | None = None) -> DryRun:
    """Validate the run ``cfg`` describes and estimate it, without opening its backend."""
    from crossbar_ctl.datasets import load_dataset
    from crossbar_ctl.decomposition import make_compressor
    from crossbar_ctl.training.mlp import layer_sizes

    out = DryRun()
    t = cfg.training
    out.info["run"] = {"backend": cfg.backend.kind, "address": cfg.backend.address, "method": t.method,
                       "mode": t.mode, "rank": t.rank, "batch_size": t.batch_size, "epochs": t.epochs,
                       "seed": cfg.seed}
    if t.method == "sgd" and t.batch_size != 1:
        out.errors.append(f"training.method = 'sgd' needs training.batch_size = 1 (got {t.batch_size})")
    _check_backend(cfg, out)
    try:
        data = load_dataset(t.dataset, data_dir=t.data_dir, limit_train=t.limit_train, limit_test=t.limit_test,
                            pool_px=t.pool_px)
    except (OSError, ValueError) as err:
        out.errors.append(f"data set {t.dataset!r}: {err}")
        return out
    n_train, n_test = len(data.x_train), len(data.x_test)
    sizes = layer_sizes(data.x_train.shape[1], list(t.hidden), 10)
    out.info["data"] = {"train": n_train, "test": n_test, "inputs": int(data.x_train.shape[1])}
    shapes = cfg.array.shapes()
    layers = []
    if len(sizes) > len(shapes):
        out.errors.append(f"{len(sizes)} layers need {len(sizes)} tiles; [array] has {len(shapes)}")
    for l, (n_in, n_out) in enumerate(sizes):
        tile = shapes[l] if l < len(shapes) else None
        fits = tile is not None and n_in <= tile[0] and 2 * n_out <= tile[1]
        if tile is not None and not fits:
            out.errors.append(f"layer {l} ({n_in} inputs incl. bias x {n_out} outputs) needs {n_in} x {2 * n_out}"
                              f" devices (differential pairs); tile {l} is {tile[0]} x {tile[1]}")
        layers.append({"layer": l, "inputs": n_in, "outputs": n_out, "tile": list(tile) if tile else None,
                       "devices_used": [n_in, 2 * n_out], "fits": fits})
    out.info["layers"] = layers
    options = {"passes": t.passes} if t.method in ("streaming-pca", "nmf") else {}
    memory = []
    for l, (n, m) in enumerate(sizes):
        try:
            memory.append(make_compressor(t.method, n, m, t.rank, np.random.default_rng(0), **options).memory_floats)
        except ValueError as err:
            out.errors.append(f"layer {l}: {err}")
    out.info["compressor_memory_floats"] = memory
    out.info["limits"] = _check_limits(cfg, sizes, out)
    counts = count_ops(cfg, sizes, n_train, n_test)
    out.info["operations"] = counts
    if cfg.backend.kind == "smu-matrix" and cfg.smu_matrix is not None:  # device by device: the rig's estimate,
        rig_s = cfg.smu_matrix.op_time_s(shapes, cfg.training.outer_slots, cfg.pulse.width_s)  # as the backend
        op_time_s = {**rig_s, **(op_time_s or {})}  # --op-time still overrides it
    out.info["duration"] = estimate_duration(cfg, counts, op_time_s)
    return out


def format_dry_run(d: DryRun) -> str:
    """The report printed by ``crossbar-ctl train --dry-run``."""
    i = d.info
    r = i.get("run", {})
    lines = [f"dry run: {r.get('method')} ({r.get('mode')}, rank {r.get('rank')}, batch {r.get('batch_size')}, "
             f"{r.get('epochs')} epoch{'' if r.get('epochs') == 1 else 's'}, seed {r.get('seed')}) on backend "
             f"{r.get('backend')!r}"
             + (f" at {r['address']}" if r.get("address") else "") + " (not opened)"]
    if "data" in i:
        lines.append(f"data: {i['data']['train']} training / {i['data']['test']} test samples, "
                     f"{i['data']['inputs']} inputs")
    for lay in i.get("layers", []):
        lines.append(f"layer {lay['layer']}: {lay['inputs']} x {lay['outputs']} -> devices {lay['devices_used'][0]}"
                     f" x {lay['devices_used'][1]} on tile {lay['tile']}: {'fits' if lay['fits'] else 'DOES NOT FIT'}")
    if "limits" in i:
        lim = i["limits"]
        v = lim["voltages_V"]
        lines.append(f"peak voltages: read {v['read_V']:g} V, set {v['set_V']:g} V, reset {v['reset_V']:g} V, "
                     f"half-select {v['half_select_V']:g} V (limit {v['max_voltage_V']:g} V)")
        p = lim["pulses_per_device"]
        phase = f"rank-seq phase <= {p['outer_phase_max']}" if p["outer_phase_max"] else "no rank-seq phases"
        lines.append(f"pulses per device per operation: {phase}, initial "
                     f"programming ~{p['initial_programming_estimate']} (worst {p['initial_programming_worst']}), "
                     f"update {p['update_per_unit_gradient']:.3g} per unit gradient (limit "
                     f"{p['max_pulses_per_device']})")
        lines.append(f"worst-case column current {lim['worst_column_current_A']:.3g} A")
    if "operations" in i:
        o = i["operations"]
        ops = ", ".join(f"{k} {v}" for k, v in o["per_epoch"].items() if v)
        lines.append(f"operations per epoch (at most): {ops} ({o['array_ops_per_epoch']} in all; "
                     f"{o['batches_per_epoch']} batches, {o['vectors_read_per_epoch']} vectors read, "
                     f"{o['row_programs_per_epoch']} row programs, {o['phases_per_batch']} phases per batch; "
                     f"{o['wire_bytes_per_epoch'] / 1e6:.3g} MB on the wire)")
        init = ", ".join(f"{k} {v}" for k, v in o["initial_programming"].items())
        lines.append(f"initial programming (once): {init}")
    if "duration" in i:
        du = i["duration"]
        line = f", {du['serial_line_s_per_epoch']:.3g} s on the serial line" if du["serial_line_s_per_epoch"] else ""
        lines.append(f"estimated duration: {du['epoch_s']:.1f} s per epoch ({du['pulse_trains_s_per_epoch']:.3g} s "
                     f"of pulse trains{line}), {du['run_s']:.1f} s for the run (per-op times "
                     + ", ".join(f"{k} {v:g} s" for k, v in du["op_time_s"].items()) + ")")
    lines += [f"warning: {w}" for w in d.warnings]
    lines += [f"error: {e}" for e in d.errors]
    lines.append("dry run OK: nothing was sent to the array" if d.ok else
                 f"dry run FAILED with {len(d.errors)} error(s): nothing was sent to the array")
    return "\n".join(lines)


def parse_op_times(items: list[str]) -> dict[str, float]:
    """``--op-time KIND=SECONDS`` options as a dict (an unparsable item raises ConfigError naming it)."""
    out: dict[str, float] = {}
    for item in items:
        kind, _, value = item.partition("=")
        try:
            out[kind.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--op-time {item!r}: expected KIND=SECONDS, e.g. read_vmm=5e-4") from None
    return out
