"""SimBackend: the crossbar operations on simulated devices (kind ``"sim"``).

State per tile: the conductance G (siemens, float64, rows × cols), initialised at each device's Gmin (stuck-at-max
devices at Gmax), a float32 copy kept current by the write kernels (the read path multiplies it with BLAS) and,
when read noise is on, a lazily rebuilt float32 G². Device parameters (d2d spread, stuck devices) are drawn once
from the run seed at construction; see :mod:`crossbar_sim.device_arrays` and :mod:`crossbar_sim.kernels`
(a ``tabular`` device: :mod:`crossbar_sim.tabular`, pulse by pulse, same keys and device streams).

Randomness: one ``np.random.Generator(PCG64(SeedSequence(seed, spawn_key=(1,))))`` drives everything, in op order:
the d2d/stuck draws of each tile at construction, then one 64-bit key per write operation (device streams are
derived from it inside the kernels; keys are the Generator's raw 64-bit outputs, taken :data:`KEY_BLOCK` at a time
when the previous block is used up) and vectorised normals for read noise. Same seed + config + op sequence ⇒
bit-identical conductances, for any Numba thread count.

Rules this simulator implements (beyond :mod:`crossbar_ctl.devices`):

* A write of ``count`` pulses of (V, t) is one write of n_eff = count·rule(V, t) nominal pulses per device.
* Half-select disturb under V/2 biasing (outer_pulse, program, pulse_cell): a half-selected device sees V/2 for one
  slot. If |V|/2 > V_th it really switches: every half-select slot is a pulse of rule(V/2, t) effective pulses.
  Otherwise, with probability ``half_select_disturb`` per half-select slot, it takes a disturb pulse of the same
  polarity counted as one nominal pulse. A pulse that is itself at or below threshold disturbs nothing.
  In ``program`` (row by row, all set pulses then all reset pulses) device (i, j) is half-selected
  (max over its row of the counts − its count) + (sum over its column of the counts − its count) slots per
  polarity; in ``pulse_cell`` the other devices of the row and column are half-selected ``count`` slots.
  With the probability 0 and |V|/2 ≤ V_th (the defaults) all of this costs nothing.
* ``read_cell`` at |V| > V_th first applies one pulse of that amplitude and width ``width_ref_s`` to the device
  (the device cannot tell a read from a write); read-disturb of other devices is not modelled.
* Reads return float32 currents (read_vmm) and float64 conductances (read_conductance); see
  :mod:`crossbar_sim.readout` for DAC/ADC and read noise. ADC quantisation applies to read_vmm/read_vmm_t only.
"""
from __future__ import annotations

import json
from typing import Any, ClassVar

import numba
import numpy as np

from threadpoolctl import threadpool_limits

from crossbar_ctl.backend import Backend, Capabilities
from crossbar_ctl.blas import WIDE_MIN_FLOPS
from crossbar_ctl.config import RunConfig
from crossbar_sim import kernels, readout, tabular
from crossbar_sim.device_arrays import DeviceArrays, make_device_arrays, pulse_scale

SPAWN_KEY = (1,)
KEY_BLOCK = 64  # write keys drawn per refill: one raw draw per write cost 0.75 µs, an element of a block 0.1 µs
PARALLEL_MIN_PROGRAM = 8192  # devices of a program below which one thread is faster than waking the pool
PARALLEL_MIN_OUTER = 2048  # active devices of an outer-pulse phase, likewise
PLAIN_READ_MAX = int(WIDE_MIN_FLOPS // 2)  # multiply-adds of a read below which BLAS stays on one thread: a
# read without noise or converters is then just the product (readout.vmm would add nothing but call overhead)



_OUTER_MODES = {"stochastic": kernels.MODE_STOCHASTIC, "expected": kernels.MODE_EXPECTED,
                "nearest": kernels.MODE_NEAREST}

class _Tile:
    """One simulated array: device parameters and the conductance state."""

    __slots__ = ("dev", "g", "g32", "g2", "all_rows", "all_cols", "rates", "tables", "lins")

    def __init__(self, dev: DeviceArrays) -> None:
        self.dev = dev
        self.g = dev.initial_conductance()
        self.g32 = self.g.astype(np.float32)
        self.g2: np.ndarray | None = None
        rows, cols = dev.shape
        self.all_rows = np.arange(rows, dtype=np.int64)
        self.all_cols = np.arange(cols, dtype=np.int64)
        self.rates = dev.uniform_rates()
        self.tables: dict[tuple[float, float], np.ndarray] = {}
        self.lins = np.array([dev.linear_up, dev.linear_down])

    def written(self) -> None:
        self.g2 = None

    def refresh(self) -> None:
        self.g32 = self.g.astype(np.float32)
        self.g2 = None
        self.rates = self.dev.uniform_rates()
        self.tables.clear()

    def table(self, s_up: float, s_down: float, kmax: int) -> np.ndarray:
        """The pulse table of :func:`kernels.pulse_table` for these pulse scales (cached)."""
        tab = self.tables.get((s_up, s_down))
        if tab is None or tab.shape[1] <= kmax:
            if len(self.tables) > 32:
                self.tables.clear()
            tab = kernels.pulse_table(float(s_up), float(s_down), self.rates[0], self.rates[1], int(kmax))
            self.tables[(s_up, s_down)] = tab
        return tab


class SimBackend(Backend):
    """Numba device-physics simulator of one or more crossbar tiles."""

    kind: ClassVar[str] = "sim"

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.device = config.device
        rd = config.read
        self._dac_bits = readout.check_bits(rd.dac_bits, "[read].dac_bits")
        self._adc_bits = readout.check_bits(rd.adc_bits, "[read].adc_bits")
        self._sigma_read = float(rd.read_noise)
        self._plain_read = self._sigma_read == 0.0 and self._dac_bits == 0 and self._adc_bits == 0
        self._v_fs = float(rd.v_read_V)
        self._sigma_c2c = float(self.device.sigma_c2c)
        shapes = tuple((int(r), int(c)) for r, c in config.array.shapes())
        self._caps = Capabilities(tile_shapes=shapes, outer_modes=tuple(_OUTER_MODES))
        self._rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=SPAWN_KEY))
        self._tiles = [_Tile(make_device_arrays(self.device, s, self._rng)) for s in shapes]
        self._raw = self._rng.bit_generator.random_raw
        self._keys = np.empty(0, dtype=np.uint64)  # the current block of write keys and the next one to use
        self._key_next = 0
        self._pulse_cache: dict[tuple[float, float], tuple[float, float, float]] = {}
        self._table: tabular.Table | None = None  # a tabular device runs through crossbar_sim.tabular
        if self.device.model == "tabular":
            tabular.ensure_fresh()
            self._table = tabular.table_arrays(self.device)
        # The kernels run on Numba's threads; a multi-threaded BLAS beside them oversubscribes the cores and its
        # spinning workers slow every read several-fold (measured: 7.6 ms vs 0.13 ms per 64x785x200 read on 2
        # busy cores). BLAS is held to one thread while the simulator is open.
        self._blas_limit = threadpool_limits(limits=1, user_api="blas")

    # ----------------------------------------------------------------- helpers
    def _key(self) -> np.uint64:
        """One 64-bit key per write operation (the device streams of the kernels derive from it): the next of a
        block of raw 64-bit outputs of the Generator's PCG64, a new block drawn when this one is used up."""
        i = self._key_next
        keys = self._keys
        if i == keys.shape[0]:
            keys = self._keys = self._raw(KEY_BLOCK)
            i = 0
        self._key_next = i + 1
        return keys[i]

    def _pulse(self, v_V: float, width_s: float) -> tuple[float, float, float]:
        """(n_eff per pulse, disturb probability per half-select slot, n_eff per disturb) of pulses (V, t) under
        V/2 biasing; memoised since every phase of a run uses the same few pulse shapes."""
        key = (v_V, width_s)
        out = self._pulse_cache.get(key)
        if out is None:
            s = pulse_scale(self.device, v_V, width_s)
            s_half = pulse_scale(self.device, 0.5 * v_V, width_s)
            h = float(self.device.half_select_disturb)
            if s == 0.0:
                out = (0.0, 0.0, 0.0)
            elif s_half > 0.0:
                out = (s, 1.0, s_half)
            else:
                out = (s, h, 1.0) if h > 0.0 else (s, 0.0, 0.0)
            if len(self._pulse_cache) > 64:
                self._pulse_cache.clear()
            self._pulse_cache[key] = out
        return out

    def _i_full_scale(self, lines: int) -> float:
        fs = self.config.read.adc_full_scale_A
        return fs if fs > 0 else self._v_fs * self.device.g_max_S * lines

    def _g2(self, t: _Tile) -> np.ndarray | None:
        if self._sigma_read > 0.0 and t.g2 is None:
            t.g2 = t.g32 * t.g32
        return t.g2

    def _outer(self, tile: int, p: np.ndarray, q: np.ndarray, up: bool, slots: int, mode: int, s: float,
               h: float, e_d: float, key: np.uint64) -> None:
        t = self._tiles[tile]
        if h > 0.0:
            rows_idx, cols_idx = t.all_rows, t.all_cols
        else:
            if s == 0.0:
                return
            rows_idx, cols_idx = p.nonzero()[0], q.nonzero()[0]
            if rows_idx.size == 0 or cols_idx.size == 0:
                return
        if self._table is not None:
            fn = tabular.outer_par if rows_idx.size * cols_idx.size >= PARALLEL_MIN_OUTER else tabular.outer_ser
            fn(t.g, t.g32, t.dev.par, *self._table, p, q, rows_idx, cols_idx, int(slots), int(mode), 0 if up else 1,
               float(s), float(h), float(e_d), key)
            t.written()
            return
        lin = t.dev.linear_up if up else t.dev.linear_down
        fn = kernels.outer_par if rows_idx.size * cols_idx.size >= PARALLEL_MIN_OUTER else kernels.outer_ser
        tab = t.table(s, s, max(int(slots), self.limits.max_pulses_per_device))
        fn(t.g, t.g32, t.dev.par, p, q, rows_idx, cols_idx, int(slots), int(mode), bool(up), bool(lin),
           tab, float(h), float(e_d), self._sigma_c2c, key)
        t.written()

    # ----------------------------------------------------------------- Backend hooks
    def _capabilities(self) -> Capabilities:
        return self._caps

    def _read_vmm(self, tile: int, v: np.ndarray) -> np.ndarray:
        t = self._tiles[tile]
        if self._plain_read and v.shape[0] * t.g32.size < PLAIN_READ_MAX:  # noise-free small read: the product
            return np.dot(v, t.g32)
        return readout.vmm(v, t.g32, self._g2(t), self._sigma_read, self._rng, self._dac_bits, self._v_fs,
                           self._adc_bits, self._i_full_scale(t.g.shape[0]))

    def _read_vmm_t(self, tile: int, v: np.ndarray) -> np.ndarray:
        t = self._tiles[tile]
        if self._plain_read and v.shape[0] * t.g32.size < PLAIN_READ_MAX:
            return np.dot(v, t.g32.T)
        g2 = self._g2(t)
        return readout.vmm(v, t.g32.T, None if g2 is None else g2.T, self._sigma_read, self._rng, self._dac_bits,
                           self._v_fs, self._adc_bits, self._i_full_scale(t.g.shape[1]))

    def _read_conductance(self, tile: int) -> np.ndarray:
        g = self._tiles[tile].g
        if self._sigma_read == 0.0:
            return g.copy()
        return g * (1.0 + self._sigma_read * self._rng.standard_normal(g.shape))

    def _read_cell(self, tile: int, row: int, col: int, v_read_V: float) -> float:
        t = self._tiles[tile]
        s = pulse_scale(self.device, v_read_V, self.device.width_ref_s)
        if s > 0.0:  # a read above threshold is a pulse of width width_ref_s
            p = np.zeros(t.g.shape[0])
            q = np.zeros(t.g.shape[1])
            p[row] = q[col] = 1.0
            self._outer(tile, p, q, v_read_V > 0, 1, kernels.MODE_STOCHASTIC, s, 0.0, 0.0, self._key())
        g = float(t.g[row, col])
        if self._sigma_read > 0.0:
            g *= 1.0 + self._sigma_read * float(self._rng.standard_normal())
        return g * v_read_V

    def _outer_pulse(self, tile: int, p: np.ndarray, q: np.ndarray, polarity: int, slots: int, mode: str,
                     v_pulse_V: float, width_s: float) -> None:
        key = self._key()
        s, h, e_d = self._pulse(v_pulse_V, width_s)
        self._outer(tile, p, q, polarity > 0, slots, _OUTER_MODES[mode], s, h, e_d, key)

    def _program(self, tile: int, pulses: np.ndarray, v_set_V: float, v_reset_V: float, width_s: float) -> None:
        key = self._key()
        t = self._tiles[tile]
        s_up, h_up, e_up = self._pulse(v_set_V, width_s)
        s_dn, h_dn, e_dn = self._pulse(v_reset_V, width_s)
        d = t.dev
        if self._table is not None:
            if s_up > 0.0 or s_dn > 0.0 or h_up > 0.0 or h_dn > 0.0:
                fn = tabular.program_par if pulses.size >= PARALLEL_MIN_PROGRAM else tabular.program_ser
                fn(t.g, t.g32, pulses, d.par, *self._table, s_up, s_dn, h_up, e_up, h_dn, e_dn, key)
        elif h_up > 0.0 or h_dn > 0.0:
            kernels.program_disturb(t.g, t.g32, pulses, d.par, d.linear_up, d.linear_down, s_up, s_dn,
                                    h_up, e_up, h_dn, e_dn, self._sigma_c2c, key)
        elif s_up > 0.0 or s_dn > 0.0:
            tab = t.table(s_up, s_dn, self.limits.max_pulses_per_device)
            fn = kernels.program_par if pulses.size >= PARALLEL_MIN_PROGRAM else kernels.program_ser
            fn(t.g, t.g32, pulses, d.par, t.lins, tab, self._sigma_c2c, key)
        t.written()

    def _pulse_cell(self, tile: int, row: int, col: int, v_pulse_V: float, width_s: float, count: int) -> None:
        key = self._key()
        if count == 0:
            return
        t = self._tiles[tile]
        p = np.zeros(t.g.shape[0])
        q = np.zeros(t.g.shape[1])
        p[row] = q[col] = 1.0
        s, h, e_d = self._pulse(v_pulse_V, width_s)
        if self._table is not None and h == 0.0:  # the same draws as the one-hot outer phase, without the scan
            if s > 0.0:
                tabular.pulse_cell(t.g, t.g32, t.dev.par, *self._table, row, col, 0 if v_pulse_V > 0 else 1,
                                   int(count), float(s), key)
                t.written()
            return
        self._outer(tile, p, q, v_pulse_V > 0, count, False, s, h, e_d, key)

    def _describe(self) -> dict[str, Any]:
        return {
            "model": self.device.model,
            "preset": self.device.preset,
            "seed": self.config.seed,
            "numba": numba.__version__,
            "numba_threads": numba.get_num_threads(),
        }

    # ----------------------------------------------------------------- simulator-only extras
    def true_conductance(self, tile: int) -> np.ndarray:
        """The noise-free conductances G (S) of ``tile`` (a copy): for tests and invariants, not an array op."""
        self._check_tile(tile)
        return self._tiles[tile].g.copy()

    def device_arrays(self, tile: int) -> DeviceArrays:
        """The per-device parameters of ``tile`` (read-only use)."""
        self._check_tile(tile)
        return self._tiles[tile].dev

    def get_state(self) -> dict[str, np.ndarray]:
        """Every piece of simulator state (conductances, device parameters, Generator state, op counter) as
        arrays, e.g. for ``np.savez``; :meth:`set_state` resumes bit-identically."""
        state: dict[str, np.ndarray] = {
            "rng": np.frombuffer(json.dumps(self._rng.bit_generator.state).encode(), dtype=np.uint8).copy(),
            "seq": np.array(self.seq, dtype=np.int64),
            "keys": self._keys[self._key_next:].copy(),  # drawn from the Generator, not used yet
        }
        for k, t in enumerate(self._tiles):
            state[f"tile{k}.g"] = t.g.copy()
            state[f"tile{k}.par"] = t.dev.par.copy()
            state[f"tile{k}.stuck"] = t.dev.stuck.copy()
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`get_state` returned (shapes must match this backend's tiles)."""
        self._check_open()
        missing = [k for k in ["rng", "seq"] + [f"tile{k}.{f}" for k in range(self.n_tiles)
                                                for f in ("g", "par", "stuck")] if k not in state]
        if missing:
            raise ValueError(f"simulator state lacks {', '.join(missing)}")
        for k, t in enumerate(self._tiles):
            for name, ref in (("g", t.g), ("par", t.dev.par), ("stuck", t.dev.stuck)):
                if np.shape(state[f"tile{k}.{name}"]) != ref.shape:
                    raise ValueError(f"state tile{k}.{name} has shape {np.shape(state[f'tile{k}.{name}'])}, "
                                     f"this backend needs {ref.shape}")
        rng_state = json.loads(np.asarray(state["rng"], dtype=np.uint8).tobytes().decode())
        self._rng.bit_generator.state = rng_state
        self._keys = np.array(state.get("keys", ()), dtype=np.uint64)  # (states saved before key blocks: none)
        self._key_next = 0
        self.seq = int(state["seq"])
        for k, t in enumerate(self._tiles):
            t.g = np.array(state[f"tile{k}.g"], dtype=np.float64, order="C")
            t.dev.par = np.array(state[f"tile{k}.par"], dtype=np.float64, order="C")
            t.dev.stuck = np.array(state[f"tile{k}.stuck"], dtype=np.int8, order="C")
            t.refresh()

    def _close(self) -> None:
        self._blas_limit.restore_original_limits()
