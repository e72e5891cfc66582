"""The Backend interface: the crossbar operations every array (simulated or real) offers, and the registry.

Units are SI throughout: volts, seconds, siemens, amperes. A backend holds ``n_tiles`` tiles; tile ``t`` has
``rows × cols`` devices. The public methods here check their arguments once (tile index, shape, dtype,
finiteness, range and the ``[limits]`` of the run) and then call the backend's ``_``-prefixed
implementation, which may therefore trust its inputs:

* ``v`` arrays reach ``_read_vmm``/``_read_vmm_t`` as C-contiguous float32 of shape (batch, lines);
* drives reach ``_outer_pulse`` as float64 in [0, 1]; ``polarity`` is +1 or −1; ``slots`` ≥ 1;
* pulse counts reach ``_program`` as C-contiguous int32 (rows, cols) within ±max_pulses_per_device;
* every voltage and width is within the limits and has the sign its polarity needs.

Backends register under the entry-point group ``crossbar_ctl.backends``; :func:`connect` finds them by name.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import numpy as np

from crossbar_ctl.config import RunConfig, config_from_dict, load_config
from crossbar_ctl.errors import BackendError, LimitError
from crossbar_ctl.pulse_counts import abs_peak_total
from crossbar_ctl.peaks import abs_peak
from crossbar_ctl.safety import operation as _operation
from crossbar_ctl.safety import read_operation as _read_operation

ENTRY_POINT_GROUP = "crossbar_ctl.backends"

OuterMode = Literal["stochastic", "expected", "nearest"]
_FLOAT32 = np.dtype(np.float32)


class _Deferred:
    """The type of :data:`DEFERRED`."""

    def __repr__(self) -> str:
        return "DEFERRED"


#: What a write hook (``_outer_pulse``, ``_program``, ``_pulse_cell``) returns when it has sent the operation but
#: not yet learnt whether the instrument applied it (a pipelined write): the backend then records it itself, with
#: :meth:`Backend._emit`, once it knows, and the public method does not.
DEFERRED = _Deferred()
_INT32 = np.dtype(np.int32)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do natively and how fast (so that the controller can plan and warn)."""

    tile_shapes: tuple[tuple[int, int], ...]
    native_vmm: bool = True
    native_outer_pulse: bool = True
    outer_modes: tuple[str, ...] = ("stochastic", "expected")
    slow: bool = False
    op_time_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OpRecord:
    """One array operation as it was sent: enough to replay it (large arrays are passed by reference)."""

    seq: int
    kind: str
    tile: int
    params: dict[str, Any]
    status: str = "ok"  # "late": applied, its reply lost, logged when resolved; "error": applied, error reported


class Backend(abc.ABC):
    """A crossbar array (or several tiles of them). Use as a context manager: exit leaves it safe and closed."""

    kind: ClassVar[str] = "abstract"

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.seq = 0
        self._listeners: list[Callable[[OpRecord], None]] = []
        self._closed = False
        self._pulse_shapes: dict[tuple[int, Any, Any], tuple[float, float]] = {}  # memo of _pulse_shape
        #: The last sequence number the instrument had applied when this backend opened it (before the session
        #: reset it), if it keeps one: a resumed run compares it with its op log (operations a killed process
        #: applied but never logged). None for backends without a persistent counter (the simulator).
        self.instrument_seq_at_open: int | None = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config: RunConfig) -> "Backend":
        """Open the backend a run config describes."""
        return cls(config)

    # ----------------------------------------------------------------- geometry
    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities()

    @property
    def tile_shapes(self) -> tuple[tuple[int, int], ...]:
        return self.capabilities.tile_shapes

    @property
    def n_tiles(self) -> int:
        return len(self.tile_shapes)

    def shape(self, tile: int) -> tuple[int, int]:
        """(rows, cols) of ``tile``."""
        return self._check_tile(tile)

    # ----------------------------------------------------------------- op log hook
    def add_listener(self, fn: Callable[[OpRecord], None]) -> None:
        """Call ``fn(record)`` after every array operation (the op log attaches here)."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[OpRecord], None]) -> None:
        """Detach a listener added with :meth:`add_listener` (no error if it is not attached)."""
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _emit(self, kind: str, tile: int, _status: str = "ok", **params: Any) -> None:
        self.seq += 1
        if self._listeners:
            rec = OpRecord(self.seq, kind, tile, params, _status)
            for fn in self._listeners:
                fn(rec)

    # ----------------------------------------------------------------- read operations
    @_read_operation
    def read_vmm(self, tile: int, v_rows: np.ndarray) -> np.ndarray:
        """Forward multiply: drive rows with ``v_rows`` (V), shape (rows,) or (batch, rows); return column
        currents i_cols = Gᵀ v (A), shape (cols,) or (batch, cols), with read noise and DAC/ADC effects."""
        rows, cols = self._check_tile(tile)
        v, one = self._check_voltages(v_rows, rows, "v_rows")
        out = self._read_vmm(tile, v)
        if self._listeners:
            self._emit("read_vmm", tile, batch=v.shape[0])
        else:  # what _emit does without listeners, minus building its arguments (this is the hottest call)
            self.seq += 1
        return out[0] if one else out

    @_read_operation
    def read_vmm_t(self, tile: int, v_cols: np.ndarray) -> np.ndarray:
        """Transpose multiply: drive columns with ``v_cols`` (V), shape (cols,) or (batch, cols); return row
        currents i_rows = G v (A), shape (rows,) or (batch, rows)."""
        rows, cols = self._check_tile(tile)
        v, one = self._check_voltages(v_cols, cols, "v_cols")
        out = self._read_vmm_t(tile, v)
        if self._listeners:
            self._emit("read_vmm_t", tile, batch=v.shape[0])
        else:
            self.seq += 1
        return out[0] if one else out

    @_operation
    def read_conductance(self, tile: int) -> np.ndarray:
        """Read every device of ``tile`` (at the read voltage, with read noise): G, shape (rows, cols), siemens."""
        self._check_tile(tile)
        out = self._read_conductance(tile)
        self._emit("read_conductance", tile)
        return out

    @_operation
    def read_cell(self, tile: int, row: int, col: int, v_read_V: float | None = None) -> float:
        """Current (A) through one device read at ``v_read_V`` (default ``[read].v_read_V``)."""
        self._check_cell(tile, row, col)
        v = self.config.read.v_read_V if v_read_V is None else float(v_read_V)
        self._check_amplitude(v, "v_read_V")
        out = float(self._read_cell(tile, row, col, v))
        self._emit("read_cell", tile, row=row, col=col, v_read_V=v)
        return out

    # ----------------------------------------------------------------- write operations
    @_operation
    def outer_pulse(
        self,
        tile: int,
        row_drive: np.ndarray,
        col_drive: np.ndarray,
        polarity: int,
        slots: int,
        *,
        mode: OuterMode = "stochastic",
        v_pulse_V: float | None = None,
        width_s: float | None = None,
    ) -> None:
        """One parallel rank-1 pulse phase. In each of ``slots`` slots row i fires with probability
        ``row_drive[i]`` and column j with ``col_drive[j]``; device (i, j) takes a pulse of sign ``polarity``
        where both fire, so its count is Binomial(slots, row_drive[i]·col_drive[j]) (``mode="stochastic"``),
        the stochastically rounded mean slots·p·q (``mode="expected"``) or its nearest integer (``"nearest"``,
        deterministic: what an update without stochastic rounding gets). Backends list theirs in
        ``capabilities.outer_modes``."""
        rows, cols = self.shape(tile)
        p = self._check_drive(row_drive, rows, "row_drive")
        q = self._check_drive(col_drive, cols, "col_drive")
        if polarity not in (1, -1):
            raise ValueError(f"polarity must be +1 or -1, got {polarity!r}")
        if mode not in self.capabilities.outer_modes:
            raise ValueError(f"mode must be one of {self.capabilities.outer_modes}, got {mode!r}")
        slots = int(slots)
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if slots > self.limits.max_pulses_per_device:
            raise LimitError("max_pulses_per_device", slots, self.limits.max_pulses_per_device, "outer_pulse slots")
        v, w = self._pulse_shape(polarity, v_pulse_V, width_s)
        self._check_energy(slots * float(p.sum()) * float(q.sum()), v, w, "outer_pulse")
        if self._outer_pulse(tile, p, q, polarity, slots, mode, v, w) is DEFERRED:
            return
        if self._listeners:
            self._emit("outer_pulse", tile, row_drive=p, col_drive=q, polarity=polarity, slots=slots, mode=mode,
                       v_pulse_V=v, width_s=w)
        else:
            self.seq += 1

    @_operation
    def program(
        self,
        tile: int,
        pulses: np.ndarray,
        *,
        v_set_V: float | None = None,
        v_reset_V: float | None = None,
        width_s: float | None = None,
    ) -> None:
        """Apply a signed integer pulse count per device (rows, cols), row by row: n > 0 potentiating pulses at
        ``v_set_V``, n < 0 depressing pulses at ``v_reset_V`` (defaults from ``[pulse]``)."""
        rows, cols = self.shape(tile)
        if type(pulses) is np.ndarray and pulses.dtype is _INT32 and pulses.flags.c_contiguous:
            counts = pulses  # what the hook takes (the common case)
        else:
            counts = self._as_counts(pulses)
        if counts.shape != (rows, cols):
            raise ValueError(f"pulses must have shape {(rows, cols)} for tile {tile}, got {counts.shape}")
        peak, total = abs_peak_total(counts)
        if peak > self.limits.max_pulses_per_device:
            raise LimitError("max_pulses_per_device", peak, self.limits.max_pulses_per_device, "program")
        vs, w = self._pulse_shape(1, v_set_V, width_s)
        vr, _ = self._pulse_shape(-1, v_reset_V, width_s)
        self._check_energy(float(total), max(vs, -vr), w, "program")
        if self._program(tile, counts, vs, vr, w) is DEFERRED:
            return
        if self._listeners:
            self._emit("program", tile, pulses=counts, v_set_V=vs, v_reset_V=vr, width_s=w)
        else:
            self.seq += 1

    @_operation
    def pulse_cell(self, tile: int, row: int, col: int, v_pulse_V: float, width_s: float, count: int = 1) -> None:
        """Apply ``count`` pulses of ``v_pulse_V`` (sign = polarity) and ``width_s`` to one device."""
        self._check_cell(tile, row, col)
        count = int(count)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if count > self.limits.max_pulses_per_device:
            raise LimitError("max_pulses_per_device", count, self.limits.max_pulses_per_device, "pulse_cell")
        v = float(v_pulse_V)
        self._check_amplitude(v, "v_pulse_V")
        w = self._check_width(width_s)
        self._check_energy(float(count), v, w, "pulse_cell")
        if self._pulse_cell(tile, row, col, v, w, count) is DEFERRED:
            return
        self._emit("pulse_cell", tile, row=row, col=col, v_pulse_V=v, width_s=w, count=count)

    # ----------------------------------------------------------------- lifecycle
    def describe(self) -> dict[str, Any]:
        """What this backend is: kind, identity, tiles, and anything a results file should record."""
        return {"kind": self.kind, "tiles": [list(s) for s in self.tile_shapes], **self._describe()}

    def safe_state(self) -> None:
        """Outputs off, every line grounded. Safe to call at any time, repeatedly."""
        self._safe_state()

    def settle(self) -> None:
        """Wait until the instrument has confirmed every operation sent so far, so that :attr:`seq` and the
        listeners (the op log) account for all of them; raises the error of one that failed. A backend that
        pipelines writes (the tester driver) returns from a write before its confirmation; others do nothing."""
        self._check_open()
        self._settle()

    def close(self) -> None:
        """Leave the array safe and release it. Idempotent."""
        if self._closed:
            return
        try:
            self._safe_state()
        finally:
            self._closed = True
            self._close()

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- implementation hooks
    @abc.abstractmethod
    def _capabilities(self) -> Capabilities: ...

    @abc.abstractmethod
    def _read_vmm(self, tile: int, v: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _read_vmm_t(self, tile: int, v: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _read_conductance(self, tile: int) -> np.ndarray: ...

    @abc.abstractmethod
    def _read_cell(self, tile: int, row: int, col: int, v_read_V: float) -> float: ...

    @abc.abstractmethod
    def _outer_pulse(self, tile: int, p: np.ndarray, q: np.ndarray, polarity: int, slots: int,
                     mode: str, v_pulse_V: float, width_s: float) -> _Deferred | None: ...

    @abc.abstractmethod
    def _program(self, tile: int, pulses: np.ndarray, v_set_V: float, v_reset_V: float,
                 width_s: float) -> _Deferred | None: ...

    @abc.abstractmethod
    def _pulse_cell(self, tile: int, row: int, col: int, v_pulse_V: float, width_s: float,
                    count: int) -> _Deferred | None: ...

    def _describe(self) -> dict[str, Any]:
        return {}

    def _safe_state(self) -> None:
        """Default: nothing is driven between operations (the simulator); instruments override."""

    def _settle(self) -> None:
        """Default: every operation is confirmed when its method returns; instruments that pipeline override."""

    def _close(self) -> None:
        """Release resources; instruments override."""

    # ----------------------------------------------------------------- checks
    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"{self.kind} backend is closed")

    def _check_tile(self, tile: int) -> tuple[int, int]:
        """Refuse a closed backend or a bad tile index; return the tile's (rows, cols)."""
        if self._closed:
            self._check_open()
        shapes = self._capabilities().tile_shapes
        if type(tile) is int and 0 <= tile < len(shapes):  # the common case, decided without isinstance
            return shapes[tile]
        if not isinstance(tile, (int, np.integer)) or not 0 <= tile < len(shapes):
            raise IndexError(f"tile must be an integer in [0, {len(shapes) - 1}], got {tile!r}")
        return shapes[tile]

    def _check_cell(self, tile: int, row: int, col: int) -> None:
        rows, cols = self.shape(tile)
        if not (isinstance(row, (int, np.integer)) and 0 <= row < rows):
            raise IndexError(f"row must be in [0, {rows - 1}] for tile {tile}, got {row!r}")
        if not (isinstance(col, (int, np.integer)) and 0 <= col < cols):
            raise IndexError(f"col must be in [0, {cols - 1}] for tile {tile}, got {col!r}")

    def _check_voltages(self, v: np.ndarray, n: int, name: str) -> tuple[np.ndarray, bool]:
        if type(v) is np.ndarray and v.dtype is _FLOAT32 and v.ndim == 2 and v.shape[1] == n and v.flags.c_contiguous:
            arr, one = v, False  # already what the hooks take (the common case: only the range is left to check)
        else:
            arr, one = self._as_voltages(v, n, name)
        if arr.size:
            peak = abs_peak(arr)  # NaN if any element is NaN, inf if any is infinite
            if not peak <= self.limits.max_voltage_V:  # (NaN fails every comparison)
                if not math.isfinite(peak):
                    raise ValueError(f"{name} contains NaN or infinity")
                raise LimitError("max_voltage_V", peak, self.limits.max_voltage_V, name)
        return arr, one

    def _as_voltages(self, v: np.ndarray, n: int, name: str) -> tuple[np.ndarray, bool]:
        """``v`` as C-contiguous float32 (batch, n), and whether it was one vector; shape and dtype checked."""
        arr = v if type(v) is np.ndarray else np.asarray(v)
        if arr.dtype != np.float32:
            if arr.dtype.kind not in "fiu":  # floating, signed or unsigned integer
                raise TypeError(f"{name} must be a real array of volts, got dtype {arr.dtype}")
            arr = arr.astype(np.float32)
        one = arr.ndim == 1
        if one:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != n:
            raise ValueError(f"{name} must have shape ({n},) or (batch, {n}), got {np.shape(v)}")
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        return arr, one

    def _check_drive(self, d: np.ndarray, n: int, name: str) -> np.ndarray:
        arr = np.ascontiguousarray(d, dtype=np.float64)
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {np.shape(d)}")
        if arr.size and not (arr.min() >= 0.0 and arr.max() <= 1.0):  # NaN fails both comparisons
            bad = arr[~((arr >= 0.0) & (arr <= 1.0))][0]
            raise ValueError(f"{name} entries are firing probabilities in [0, 1], got {bad!r}")
        return arr

    @staticmethod
    def _as_counts(pulses: np.ndarray) -> np.ndarray:
        """Integer pulse counts as C-contiguous int32 (refusing other dtypes and values beyond int32)."""
        arr = np.asarray(pulses)
        if arr.dtype.kind not in "iu":  # signed or unsigned integers
            raise TypeError(f"pulses must be integer counts, got dtype {arr.dtype}")
        counts = np.ascontiguousarray(arr, dtype=np.int32)
        if counts.dtype != arr.dtype and counts.size and np.any(counts != arr):
            raise ValueError("pulses do not fit in int32")
        return counts

    def _check_amplitude(self, v: float, name: str) -> None:
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v!r}")
        if abs(v) > self.limits.max_voltage_V:
            raise LimitError("max_voltage_V", abs(v), self.limits.max_voltage_V, name)

    def _check_energy(self, pulses: float, v: float, width_s: float, what: str) -> None:
        """Refuse an operation whose worst-case energy Σ n·V²·Gmax·t exceeds ``max_energy_per_op_J``
        (``pulses`` is the expected total count: Σ slots·p_i·q_j for an outer pulse)."""
        energy = pulses * v * v * self.config.device.g_max_S * width_s
        if energy > self.limits.max_energy_per_op_J:
            raise LimitError("max_energy_per_op_J", energy, self.limits.max_energy_per_op_J, what)

    def _check_width(self, width_s: float) -> float:
        w = float(width_s)
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"width_s must be a positive number of seconds, got {width_s!r}")
        if w > self.limits.max_pulse_width_s:
            raise LimitError("max_pulse_width_s", w, self.limits.max_pulse_width_s, "width_s")
        return w

    def _pulse_shape(self, polarity: int, v: float | None, width_s: float | None) -> tuple[float, float]:
        """(amplitude V, width s) of a pulse of ``polarity``, defaults from ``[pulse]``, checked against the
        limits. Memoised: the config is frozen and a run uses a few pulse shapes (only accepted shapes are kept;
        a NaN never equals its key, so it is always checked again)."""
        key = (polarity, v, width_s)
        try:
            out = self._pulse_shapes.get(key)
        except TypeError:  # an unhashable argument (e.g. a 0-d array): check it without the memo
            return self._checked_pulse_shape(polarity, v, width_s)
        if out is None:
            out = self._checked_pulse_shape(polarity, v, width_s)
            if len(self._pulse_shapes) > 64:
                self._pulse_shapes.clear()
            self._pulse_shapes[key] = out
        return out

    def _checked_pulse_shape(self, polarity: int, v: float | None, width_s: float | None) -> tuple[float, float]:
        pulse = self.config.pulse
        if v is None:
            v = pulse.v_set_V if polarity > 0 else pulse.v_reset_V
        v = float(v)
        if not (v > 0 if polarity > 0 else v < 0):  # also refuses 0 and NaN
            raise ValueError(f"pulse amplitude {v:g} V does not match polarity {polarity:+d}")
        self._check_amplitude(v, "v_pulse_V")
        w = self._check_width(pulse.width_s if width_s is None else width_s)
        return v, w


# --------------------------------------------------------------------- registry
_REGISTERED: dict[str, type[Backend]] = {}


def register_backend(name: str, cls: type[Backend]) -> None:
    """Register a backend class in-process (installed packages use the entry-point group instead)."""
    _REGISTERED[name] = cls


def available_backends() -> list[str]:
    """Names of every installed or registered backend kind."""
    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names | set(_REGISTERED))


def backend_class(kind: str) -> type[Backend]:
    """The class registered as ``kind``; an unknown kind lists the installed ones."""
    if kind in _REGISTERED:
        return _REGISTERED[kind]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == kind:
            try:
                cls = ep.load()
            except Exception as err:  # a broken plugin must say which one
                raise BackendError(f"backend {kind!r} ({ep.value}) failed to load: {err}") from err
            return cls
    known = ", ".join(available_backends()) or "(none)"
    raise BackendError(f"unknown backend kind {kind!r}; installed backends: {known}")


def connect(config_or_path: RunConfig | str | Path | dict[str, Any] | None = None) -> Backend:
    """Open the backend named by ``[backend].kind`` of a run config (object, dict or TOML path)."""
    if config_or_path is None or isinstance(config_or_path, (str, Path)):
        cfg = load_config(config_or_path)
    elif isinstance(config_or_path, dict):
        cfg = config_from_dict(config_or_path)
    elif isinstance(config_or_path, RunConfig):
        cfg = config_or_path
    else:
        raise TypeError(f"connect() takes a RunConfig, a dict or a path, got {type(config_or_path).__name__}")
    return backend_class(cfg.backend.kind).from_config(cfg)
