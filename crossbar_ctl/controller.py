"""The controller: weights <-> conductances, weight updates -> pulse operations, safety limits, op counts.

Mapping. Layer ``l`` (``N`` inputs with the bias last, ``M`` outputs) sits on tile ``l``: rows 0..N−1, the
G+ devices in columns 0..M−1 and their G− partners in columns M..2M−1 (tiles may be larger; the rest stays
undriven). A weight is

    w_ij = (G+_ij − G−_ij) / G_scale,      G_scale = (Gmax − Gmin) / (2 · weight_range)

G− is each pair's reference: it is programmed once to the device's symmetry point G_s (where one up and one
down pulse are equal; random pulses drift a device there) and then left alone, while G+ moves up
(potentiation) for Δw > 0 and down (depression) for Δw < 0, so that training sees the device's own
asymmetric potentiation/depression around w = 0. The array is the only copy of the weights: forward and backward
passes use ``read_vmm``/``read_vmm_t``; nothing on the host absorbs an update.

Updates. One nominal pulse moves a weight by dw = ΔG(G_s) / G_scale (the step at the symmetry point). A
desired update Δw = −lr·G becomes n = Δw/dw pulses:

* rank-sum / dense: n is rounded stochastically (⌊n⌋ + Bernoulli(n − ⌊n⌋), unbiased: E[round(n)] = n) or to
  nearest when stochastic rounding is off, then programmed row by row with ``program``;
* rank-seq: each factor pair u vᵀ is split into sign quadrants (u±, v±); every non-empty quadrant is one
  ``outer_pulse`` phase with drives p = s·a/max(a), q = s·b/max(b), s = √(n_max/slots), so that the expected
  count slots·p_i·q_j equals lr·a_i·b_j/dw exactly. A non-negative pair needs one phase, a signed one up to
  four. A phase that would need more than ``slots`` pulses at one device is split into equal phases.

Every operation is checked against ``[limits]`` before it is sent: a violation raises :class:`LimitError`
naming the limit; nothing is clamped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from crossbar_ctl.backend import Backend
from crossbar_ctl.config import RunConfig
from crossbar_ctl.decomposition.base import DenseUpdate, LowRankUpdate, Update
from crossbar_ctl.errors import LimitError
from crossbar_ctl.pulse_counts import abs_peak_total, add_abs, draw_key, round_counts, stochastic_round
from crossbar_ctl.read_drive import currents_to_deltas, currents_to_outputs, deltas_to_volts, inputs_to_volts

__all__ = ["Controller", "LayerMap", "OpCounts", "stochastic_round"]

FOLD = 64  # rank-seq phases per low-rank fold of the per-device pulse counts


@dataclass
class LayerMap:
    """Where one layer lives on the array and how its weights scale to conductances."""

    tile: int
    n_in: int
    n_out: int
    g_scale_S: float
    dw: float  # weight change of one nominal pulse
    tile_rows: int = 0  # the tile's shape
    tile_cols: int = 0


@dataclass
class OpCounts:
    """What the hardware spent: array operations and device pulses (expected counts for rank-seq).

    Rank-seq phases add slots·p_i·q_j to every device: a rank-1 term. They are kept as columns of a low-rank
    buffer per layer (preallocated N×FOLD and M×FOLD arrays) and folded into ``per_device`` with one matrix
    product every :data:`FOLD` phases (and before anyone reads it: use :meth:`per_device_counts`), instead of an
    N×M outer product per phase."""

    reads: int = 0  # vectors read (forward and transpose)
    phases: int = 0  # outer_pulse phases
    row_programs: int = 0  # rows programmed (rows with any nonzero count)
    program_ops: int = 0
    device_pulses: float = 0.0
    per_device: list[np.ndarray] = field(default_factory=list)
    _pending: dict[int, tuple[np.ndarray, np.ndarray, int]] = field(default_factory=dict)  # (A, B, columns used)

    @property
    def array_ops(self) -> int:
        return self.reads + self.phases + self.row_programs

    def add_rank1(self, layer: int, a: np.ndarray, b: np.ndarray, times: int = 1) -> None:
        """per_device[layer] += times·a bᵀ (deferred)."""
        pend = self._pending.get(layer)
        if pend is None:
            n, m = self.per_device[layer].shape
            pend = (np.empty((n, FOLD)), np.empty((m, FOLD)), 0)
        A, B, k = pend
        np.multiply(a, times, out=A[:, k])
        B[:, k] = b
        self._pending[layer] = (A, B, k + 1)
        if k + 1 >= FOLD:
            self._fold(layer)

    def _fold(self, layer: int) -> None:
        A, B, k = self._pending.get(layer, (None, None, 0))
        if k:
            self.per_device[layer] += A[:, :k] @ B[:, :k].T
            self._pending[layer] = (A, B, 0)

    def per_device_counts(self) -> list[np.ndarray]:
        """Pulses per device of every layer, with the deferred rank-seq terms folded in."""
        for layer in list(self._pending):
            self._fold(layer)
        return self.per_device

    def summary(self) -> dict[str, float]:
        per_device = self.per_device_counts()
        maxes = [float(p.max()) for p in per_device if p.size]
        means = [float(p.mean()) for p in per_device if p.size]
        return {
            "array_ops": self.array_ops,
            "reads": self.reads,
            "phases": self.phases,
            "row_programs": self.row_programs,
            "device_pulses": float(self.device_pulses),
            "max_pulses_per_device": max(maxes) if maxes else 0.0,
            "mean_pulses_per_device": float(np.mean(means)) if means else 0.0,
        }


class Controller:
    """Runs a multi-layer network's crossbar operations on a backend, within the run's limits."""

    def __init__(
        self,
        backend: Backend,
        config: RunConfig,
        layer_sizes: list[tuple[int, int]],
        rng: np.random.Generator,
    ) -> None:
        self.backend = backend
        self.config = config
        self.rng = rng
        self.limits = config.limits
        dev = config.device
        train = config.training
        self.v_read = config.read.v_read_V
        self.stochastic = train.stochastic_rounding
        self.slots = train.outer_slots
        self.outer_mode = train.outer_mode if self.stochastic else "nearest"
        g_scale = dev.g_range_S / (2.0 * train.weight_range)
        self.g_ref = dev.symmetry_point_S()
        step_ref = dev.step_S(self.g_ref)[0]
        self.layers: list[LayerMap] = []
        if len(layer_sizes) > backend.n_tiles:
            raise ValueError(f"{len(layer_sizes)} layers need {len(layer_sizes)} tiles; the array has {backend.n_tiles}")
        for t, (n_in, n_out) in enumerate(layer_sizes):
            rows, cols = backend.shape(t)
            if n_in > rows or 2 * n_out > cols:
                raise ValueError(
                    f"layer {t} ({n_in} inputs x {n_out} outputs) needs a {n_in} x {2 * n_out} tile "
                    f"(differential pairs); tile {t} is {rows} x {cols}"
                )
            self.layers.append(LayerMap(t, n_in, n_out, g_scale, step_ref / g_scale, rows, cols))
        self.counts = OpCounts(per_device=[np.zeros((n, m)) for n, m in layer_sizes])
        self._check_static_limits()
        # Read drives reused from batch to batch, per (layer, "rows" or "cols"); lines the layer does not use
        # stay at 0 V. (Reads log only the batch size, so no listener sees these buffers.)
        self._drives: dict[tuple[int, str], np.ndarray] = {}

    def reset_counts(self) -> dict[str, float]:
        """Start counting afresh (after initial programming); returns the summary of what was counted so far."""
        done = self.counts.summary()
        self.counts = OpCounts(per_device=[np.zeros((lay.n_in, lay.n_out)) for lay in self.layers])
        return done

    # ------------------------------------------------------------------ limits
    def _check_static_limits(self) -> None:
        """Worst-case line currents of reads and pulses against the compliance current."""
        dev = self.config.device
        lim = self.limits
        for lay in self.layers:
            i_read = self.v_read * dev.g_max_S * lay.n_in
            if i_read > lim.compliance_current_A:
                raise LimitError("compliance_current_A", i_read, lim.compliance_current_A,
                                 f"worst-case column read current of tile {lay.tile}")
            v_pulse = max(abs(self.config.pulse.v_set_V), abs(self.config.pulse.v_reset_V))
            i_pulse = v_pulse * dev.g_max_S * lay.n_in
            if i_pulse > lim.compliance_current_A:
                raise LimitError("compliance_current_A", i_pulse, lim.compliance_current_A,
                                 f"worst-case column pulse current of tile {lay.tile}")

    def _check_pulses(self, n_max: float, total: float, v: float, what: str) -> None:
        lim = self.limits
        if n_max > lim.max_pulses_per_device:
            raise LimitError("max_pulses_per_device", n_max, lim.max_pulses_per_device, what)
        energy = total * v * v * self.config.device.g_max_S * self.config.pulse.width_s
        if energy > lim.max_energy_per_op_J:
            raise LimitError("max_energy_per_op_J", energy, lim.max_energy_per_op_J, what)

    # ------------------------------------------------------------------ reads
    def forward(self, layer: int, x: np.ndarray) -> np.ndarray:
        """y = Wᵀx on the array for a batch x (B, n_in) (bias column included), by ``read_vmm``; float32, the
        precision of the reads.

        Each input vector is scaled to the DAC range (v = x·v_read/max|x|) and the output rescaled back."""
        lay = self.layers[layer]
        scale = np.maximum(x.max(axis=1, keepdims=True), -x.min(axis=1, keepdims=True)).astype(np.float32)
        scale[scale == 0] = 1.0
        rows = lay.tile_rows
        v = (np.empty if rows == lay.n_in else np.zeros)((x.shape[0], rows), dtype=np.float32)  # undriven rows: 0 V
        np.multiply(x, np.float32(self.v_read) / scale, out=v[:, : lay.n_in], casting="unsafe")
        i = np.asarray(self.backend.read_vmm(lay.tile, v), dtype=np.float32)
        self.counts.reads += x.shape[0]
        m = lay.n_out
        return (i[:, :m] - i[:, m : 2 * m]) * (scale / np.float32(lay.g_scale_S * self.v_read))

    def forward_inputs(self, layer: int, src: np.ndarray, rows: np.ndarray, relu: bool = False,
                       divisor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """The layer's input batch and its outputs: x = [src[rows], 1] (float32, the bias last; with ReLU applied
        to src[rows] if ``relu``; or, for a ``divisor`` other than 1, src[rows]/divisor in float32, e.g. uint8 pixel
        codes and 255) and y = Wᵀx read on the array, exactly as ``forward(layer, x)`` computes them, but with the
        gather, the bias column and the scaling to volts done in one pass (no batch copy)."""
        lay = self.layers[layer]
        src = np.ascontiguousarray(src)
        rows = np.ascontiguousarray(rows, dtype=np.intp)
        if src.ndim != 2 or src.shape[1] + 1 != lay.n_in:
            raise ValueError(f"layer {layer} takes {lay.n_in - 1} inputs (and the bias), got shape {src.shape}")
        if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= src.shape[0])):
            raise IndexError(f"rows must be a 1-D index array within [0, {src.shape[0] - 1}]")
        if divisor != 1.0 and relu:
            raise ValueError("forward_inputs takes a divisor or relu, not both")
        b = rows.shape[0]
        xb = np.empty((b, lay.n_in), dtype=np.float32)
        scale = np.empty(b, dtype=np.float32)
        v = self._drive(layer, "rows", b, lay.tile_rows)
        inputs_to_volts(src, rows, relu, np.float32(divisor), np.float32(self.v_read), xb, v, scale)
        i = np.ascontiguousarray(self.backend.read_vmm(lay.tile, v), dtype=np.float32)
        self.counts.reads += b
        z = np.empty((b, lay.n_out), dtype=np.float32)
        currents_to_outputs(i, lay.n_out, scale, np.float32(lay.g_scale_S * self.v_read), z)
        return xb, z

    def _drive(self, layer: int, direction: str, batch: int, lines: int) -> np.ndarray:
        """The reused (batch, lines) float32 drive buffer of ``layer``; lines a layer leaves undriven stay 0 V."""
        v = self._drives.get((layer, direction))
        if v is None or v.shape[0] != batch:
            v = self._drives[(layer, direction)] = np.zeros((batch, lines), dtype=np.float32)
        return v

    def _read_t(self, layer: int, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row currents of the transpose read of ``delta`` (B, n_out) (G+ columns at +v, G− at −v) and the
        per-sample input scale."""
        lay = self.layers[layer]
        delta = np.ascontiguousarray(delta)
        if delta.ndim != 2 or delta.shape[1] != lay.n_out:
            raise ValueError(f"delta for layer {layer} must be (batch, {lay.n_out}), got shape {delta.shape}")
        b = delta.shape[0]
        scale = np.empty(b, dtype=np.float32)
        v = self._drive(layer, "cols", b, lay.tile_cols)
        deltas_to_volts(delta, np.float32(self.v_read), v, scale)
        i = np.ascontiguousarray(self.backend.read_vmm_t(lay.tile, v), dtype=np.float32)
        self.counts.reads += b
        return i, scale

    def backward(self, layer: int, delta: np.ndarray) -> np.ndarray:
        """δ_in = W δ (B, n_in) on the array by ``read_vmm_t``: columns G+ driven at +v, G− at −v."""
        lay = self.layers[layer]
        i, scale = self._read_t(layer, delta)
        return i[:, : lay.n_in] * (scale[:, None] / np.float32(lay.g_scale_S * self.v_read))

    def backward_relu(self, layer: int, delta: np.ndarray, pre: np.ndarray) -> np.ndarray:
        """The deltas of the ReLU layer below: (W δ)[:, :n_in−1] ⊙ 1[pre > 0] (the bias row dropped), with
        ``pre`` its pre-activations (B, n_in−1); W δ read on the array as in :meth:`backward`."""
        lay = self.layers[layer]
        if pre.shape != (delta.shape[0], lay.n_in - 1):
            raise ValueError(f"pre for layer {layer} must be {(delta.shape[0], lay.n_in - 1)}, got {pre.shape}")
        i, scale = self._read_t(layer, delta)
        out = np.empty(pre.shape, dtype=np.float32)
        currents_to_deltas(i, scale, np.float32(lay.g_scale_S * self.v_read), np.ascontiguousarray(pre), out)
        return out

    def read_weights(self, layer: int) -> np.ndarray:
        """W (n_in, n_out) from a conductance read of the layer's devices."""
        lay = self.layers[layer]
        g = self.backend.read_conductance(lay.tile)
        m = lay.n_out
        return (g[: lay.n_in, :m] - g[: lay.n_in, m : 2 * m]) / lay.g_scale_S

    # ------------------------------------------------------------------ programming
    def program_weights(self, layer: int, w: np.ndarray, max_iter: int = 6) -> float:
        """Program initial weights: G− to the reference G_s, then G+ to G− + w·G_scale (kept inside the window),
        pulse counts planned on the device model's nominal curve.

        With write-verify on, the layer is read back and devices off target are corrected. A correction of n
        pulses adds cycle-to-cycle noise of σ·√n steps (σ = σ_c2c·(Gmax−Gmin)/ΔG(G_s)), so it lowers the expected
        squared error only where n² > σ²·n: devices closer than max(1, σ²) pulses are left alone.
        Returns the RMS weight error (weight units) of the final read-back."""
        lay = self.layers[layer]
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (lay.n_in, lay.n_out):
            raise ValueError(f"weights for layer {layer} must be {(lay.n_in, lay.n_out)}, got {w.shape}")
        dev = self.config.device
        step = dev.step_S(self.g_ref)[0]
        min_correction = max(1.0, (dev.sigma_c2c * dev.g_range_S / step) ** 2)
        rows, cols = self.backend.shape(lay.tile)
        m, n_in = lay.n_out, lay.n_in
        iters = max_iter if self.config.training.write_verify else 1
        g = self.backend.read_conductance(lay.tile)
        for it in range(iters):
            g_plus, g_minus = g[:n_in, :m], g[:n_in, m : 2 * m]
            n = np.zeros((rows, cols), dtype=np.int32)
            if it == 0:
                n[:n_in, m : 2 * m] = np.rint(dev.pulses_between(g_minus, self.g_ref))
                g_minus = np.full_like(g_minus, self.g_ref)  # where it is headed
            target = np.clip(g_minus + w * lay.g_scale_S, dev.g_min_S + step, dev.g_max_S - step)
            corr = np.rint(dev.pulses_between(g_plus, target))
            if it > 0:
                corr[np.abs(corr) < min_correction] = 0
            n[:n_in, :m] = corr
            if not n.any():
                break
            self._program(lay, n, "initial programming")
            g = self.backend.read_conductance(lay.tile)
        return float(np.sqrt(np.mean(((g[:n_in, :m] - g[:n_in, m : 2 * m]) / lay.g_scale_S - w) ** 2)))

    def _program(self, lay: LayerMap, n: np.ndarray, what: str, stats: tuple[int, int, int] | None = None) -> None:
        """Program the int32 counts ``n`` (tile shaped, nonzero only in the layer's block); ``stats`` = (peak,
        total, nonzero rows) when the caller already has them."""
        if stats is None:
            peak, total = abs_peak_total(n)
            rows_nz = int(np.count_nonzero(n.any(axis=1)))
        else:
            peak, total, rows_nz = stats
        v = max(abs(self.config.pulse.v_set_V), abs(self.config.pulse.v_reset_V))
        self._check_pulses(peak, float(total), v, what)
        self.backend.program(lay.tile, n)
        add_abs(self.counts.per_device[lay.tile], n)
        self.counts.device_pulses += float(total)
        self.counts.row_programs += rows_nz
        self.counts.program_ops += 1

    # ------------------------------------------------------------------ updates
    def apply_update(self, layer: int, update: Update, lr: float, mode: str) -> None:
        """Apply Δw = −lr·G for the compressor's ``update`` in ``mode`` (``rank-seq`` or ``rank-sum``)."""
        lay = self.layers[layer]
        if isinstance(update, DenseUpdate) or mode == "rank-sum":
            self._apply_dense(lay, update.to_dense(), lr)
        elif isinstance(update, LowRankUpdate):
            for j in range(update.rank):
                self._apply_pair(lay, update.U[:, j], update.V[:, j], lr)
        else:
            raise TypeError(f"unknown update type {type(update).__name__}")

    def _apply_dense(self, lay: LayerMap, g: np.ndarray, lr: float) -> None:
        """Program n = round(−lr·g/dw) (stochastic rounding, or to nearest with it off) in one pass."""
        if g.shape != (lay.n_in, lay.n_out):
            raise ValueError(f"update of layer {lay.tile} must be {(lay.n_in, lay.n_out)}, got {g.shape}")
        n = np.zeros((lay.tile_rows, lay.tile_cols), dtype=np.int32)
        key = draw_key(self.rng) if self.stochastic else np.uint64(0)
        g2 = np.ascontiguousarray(g, dtype=np.float64)
        stats = round_counts(g2, -lr / lay.dw, key, self.stochastic, n)
        if stats[1] == 0:
            return
        self._program(lay, n, f"update of layer {lay.tile}", stats)

    def _apply_pair(self, lay: LayerMap, u: np.ndarray, v: np.ndarray, lr: float) -> None:
        # Δw = −lr·u vᵀ. Quadrant (sign u, sign v) with u_s·v_s > 0 lowers w (depression), < 0 raises it.
        u_parts = _sign_parts(u)
        if not u_parts:
            return
        v_parts = _sign_parts(v)
        for su, a, amax in u_parts:
            for sv, b, bmax in v_parts:
                self._phase(lay, a, amax, b, bmax, lr * amax * bmax / lay.dw, -su * sv)

    def _phase(self, lay: LayerMap, a: np.ndarray, amax: float, b: np.ndarray, bmax: float,
               n_max: float, polarity: int) -> None:
        """Outer-pulse phase(s) giving the expected count n_max·(a_i/amax)·(b_j/bmax) at device (i, j)."""
        if n_max <= 0.0:
            return
        n_phases = max(1, math.ceil(n_max / self.slots))
        per_phase = n_max / n_phases
        s = math.sqrt(per_phase / self.slots)
        p = np.zeros(lay.tile_rows)
        q = np.zeros(lay.tile_cols)
        np.multiply(a, s / amax, out=p[: lay.n_in])
        np.multiply(b, s / bmax, out=q[: lay.n_out])
        v = self.config.pulse.v_set_V if polarity > 0 else abs(self.config.pulse.v_reset_V)
        pa, qb = p[: lay.n_in], q[: lay.n_out]
        if self.outer_mode == "nearest":  # deterministic counts: what the device really gets (not rank 1)
            expected = np.floor(self.slots * np.outer(pa, qb) + 0.5)
            total = float(expected.sum())
        else:
            expected = None
            total = self.slots * float(pa.sum()) * float(qb.sum())
        self._check_pulses(self.slots, total, v, f"rank-seq phase on tile {lay.tile}")
        for _ in range(n_phases):
            self.backend.outer_pulse(lay.tile, p, q, polarity, self.slots, mode=self.outer_mode)
            self.counts.phases += 1
            self.counts.device_pulses += total
            if expected is None:
                self.counts.add_rank1(lay.tile, pa, qb, self.slots)
            else:
                self.counts.per_device[lay.tile] += expected


def _sign_parts(w: np.ndarray) -> list[tuple[int, np.ndarray, float]]:
    """(sign, max(sign·w, 0), its max) for sign +1 then −1, keeping only the parts with a positive entry."""
    parts = []
    for sign in (1, -1):
        part = np.maximum(w if sign > 0 else -w, 0.0)
        peak = float(part.max()) if part.size else 0.0
        if peak > 0.0:
            parts.append((sign, part, peak))
    return parts
