"""The protocol base class, its parameters and results, and the protocol registry.

A protocol is a small typed object: ``Params`` (a pydantic model, SI units, unknown keys refused) says what it
takes; :meth:`Protocol.run` applies it to a list of cells ``(tile, row, col)`` through Backend operations only
(``read_cell``, ``pulse_cell``, ``read_conductance``, ``program``) and returns a :class:`ProtocolResult`.
Before the first operation :meth:`Protocol.check` applies every check of a run, and needs only the run config
(so a dry run applies the same ones, and the runner applies them before it opens a backend or creates a file):
:meth:`Protocol.check_limits` compares every voltage, width and per-operation pulse count the whole protocol
will use (all steps of a sweep, not just the first) with the run's ``[limits]`` and raises
:class:`~crossbar_ctl.errors.LimitError` naming the limit and the value; then the energy bound, the
half-select check and :meth:`Protocol.check_config`. :meth:`Protocol.estimate` counts pulses, reads and
operations for a dry run without touching an array:

    duration_s ≈ Σ_kind ops[kind]·t_op[kind] + pulses·width_s + waits

with ``t_op`` from the backend's ``Capabilities.op_time_s`` or :data:`DEFAULT_OP_TIME_S`.

Protocols are found by name through the entry-point group ``crossbar_ctl.protocols`` (the built-in ones are
declared in pyproject.toml) and through :func:`register_protocol` for ones defined in a script or notebook.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crossbar_ctl.config import LimitsSection, RunConfig
from crossbar_ctl.dryrun import DEFAULT_OP_TIME_S as _TRAIN_OP_TIME_S
from crossbar_ctl.errors import ConfigError, LimitError

if TYPE_CHECKING:  # pragma: no cover
    from crossbar_ctl.backend import Backend
    from crossbar_protocols.clock import Clock

ENTRY_POINT_GROUP = "crossbar_ctl.protocols"

#: Seconds per operation for estimates when the backend gives none (a LAN tester: ~1 ms per command).
DEFAULT_OP_TIME_S: dict[str, float] = {**_TRAIN_OP_TIME_S, "read_cell": 1e-3, "pulse_cell": 1e-3}

#: Names a protocol parameter may not take: on the command line they are run-config sections (``--set``).
RESERVED_NAMES = frozenset(RunConfig.model_fields) | {"seed"}

Mode = Literal["cell", "parallel"]


class ProtocolParams(BaseModel):
    """Base of every protocol's parameters: SI units, unknown keys are errors, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PulseParams(ProtocolParams):
    """Programming pulses: amplitude per polarity and width."""

    v_set_V: float = Field(2.0, gt=0, description="potentiating pulse amplitude (V)")
    v_reset_V: float = Field(-2.0, lt=0, description="depressing pulse amplitude (V, negative)")
    width_s: float = Field(1e-6, gt=0, description="pulse width (s)")


class AccessParams(ProtocolParams):
    """How cells are read and pulsed."""

    v_read_V: float | None = Field(None, description="read voltage (V); None = [read].v_read_V of the rig")
    mode: Mode = Field("cell", description='"cell": one device per operation (pulse_cell/read_cell); '
                                           '"parallel": one program/read_conductance per tile for all cells')


@dataclass
class Plan:
    """What a protocol will ask of the array: operations per kind, device pulses and reads, waits (s)."""

    ops: dict[str, int] = field(default_factory=dict)
    pulses: int = 0
    reads: int = 0
    pulse_time_s: float = 0.0
    wait_s: float = 0.0

    def add_ops(self, ops: dict[str, int], times: int = 1) -> None:
        for k, n in ops.items():
            self.ops[k] = self.ops.get(k, 0) + int(n) * int(times)


@dataclass
class ProtocolResult:
    """What a protocol measured.

    ``table``: equal-length 1-D columns in long format (one row per measurement; the CSV export), names carry
    their unit (``G_S``, ``v_V``, ``i_A``, ``t_s``) and ``units`` spells it out. ``arrays``: N-D extras (maps).
    ``summary``: scalars and short lists a researcher reads first. ``meta``: config, rig, versions (filled by the
    runner)."""

    protocol: str
    params: dict[str, Any]
    cells: np.ndarray
    table: dict[str, np.ndarray]
    units: dict[str, str] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cells = np.asarray(self.cells, dtype=np.int64).reshape(-1, 3)
        lengths = {k: len(np.asarray(v)) for k, v in self.table.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"table columns differ in length: {lengths}")
        self.table = {k: np.asarray(v) for k, v in self.table.items()}

    def column(self, name: str) -> np.ndarray:
        """One table column (KeyError lists the ones there are)."""
        if name not in self.table:
            raise KeyError(f"{self.protocol} result has no column {name!r}; columns: {', '.join(self.table)}")
        return self.table[name]


def cell_columns(cells: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """``cell``, ``tile``, ``row``, ``col`` columns for rows that refer to cell numbers ``index``."""
    index = np.asarray(index, dtype=np.int64)
    return {"cell": index, "tile": cells[index, 0], "row": cells[index, 1], "col": cells[index, 2]}


CELL_UNITS = {"cell": "", "tile": "", "row": "", "col": ""}


def devices_per_op(cells: np.ndarray, mode: str) -> int:
    """Devices one pulse operation reaches: 1 in cell mode, the most cells of one tile in parallel mode."""
    if mode == "cell":
        return 1
    return int(np.bincount(np.asarray(cells)[:, 0]).max())


def normalize_cells(cells: Iterable[Iterable[int]] | np.ndarray,
                    tile_shapes: Iterable[tuple[int, int]] | None = None) -> np.ndarray:
    """Cells as an (n, 3) int64 array of (tile, row, col), checked to be unique and (given the tile shapes)
    inside the array."""
    arr = np.asarray(list(cells) if not isinstance(cells, np.ndarray) else cells, dtype=np.int64)
    if arr.size == 0:
        raise ValueError("a protocol needs at least one cell")
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"cells must be (tile, row, col) triples, got shape {arr.shape}")
    if len({tuple(c) for c in arr.tolist()}) != len(arr):
        raise ValueError("cells must not repeat")
    if tile_shapes is not None:
        shapes = list(tile_shapes)
        for t, r, c in arr.tolist():
            if not 0 <= t < len(shapes):
                raise IndexError(f"cell ({t}, {r}, {c}): tile must be in [0, {len(shapes) - 1}]")
            rows, cols = shapes[t]
            if not (0 <= r < rows and 0 <= c < cols):
                raise IndexError(f"cell ({t}, {r}, {c}) is outside tile {t} of {rows} x {cols}")
    return arr


class Protocol(abc.ABC):
    """Base class of every characterisation protocol (subclass it to add your own; see the module doc)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[ProtocolParams]] = ProtocolParams
    #: Cells used when the caller gives none (cell spec of :func:`crossbar_protocols.cells.parse_cells`).
    default_cells: ClassVar[str] = "0:0:0"

    def __init__(self, params: ProtocolParams | dict[str, Any] | None = None, **overrides: Any) -> None:
        if isinstance(params, BaseModel):
            data = params.model_dump()
        else:
            data = dict(params or {})
        data.update(overrides)
        try:
            self.params = self.Params.model_validate(data)
        except ValidationError as err:
            lines = [f"protocol {self.name}: invalid parameters"]
            for e in err.errors():
                loc = ".".join(str(p) for p in e["loc"]) or "(parameters)"
                msg = "unknown parameter" if e["type"] == "extra_forbidden" else e["msg"]
                lines.append(f"  {loc}: {msg} (got {e.get('input')!r})")
            raise ConfigError("\n".join(lines)) from None

    # ----------------------------------------------------------------- what subclasses provide
    @abc.abstractmethod
    def limit_items(self) -> Iterable[tuple[str, float, str]]:
        """Every (``[limits]`` key, value, what) the protocol will use: |V| of every pulse and read, widths,
        pulses per device per operation, compliance. Values are compared with ``value <= limit``."""

    @staticmethod
    def pulse_limit_items(v_set_V: float, v_reset_V: float, v_read_V: float | None,
                          width_s: float) -> Iterable[tuple[str, float, str]]:
        """The limit items of a protocol's set and reset pulses and its read voltage (for :meth:`limit_items`)."""
        yield "max_voltage_V", v_set_V, "v_set_V"
        yield "max_voltage_V", abs(v_reset_V), "v_reset_V"
        if v_read_V is not None:
            yield "max_voltage_V", abs(v_read_V), "v_read_V"
        yield "max_pulse_width_s", width_s, "width_s"

    @abc.abstractmethod
    def plan(self, cells: np.ndarray) -> Plan:
        """Operations, pulses and reads the protocol sends for ``cells`` (at most: early stops send fewer)."""

    @abc.abstractmethod
    def _run(self, backend: "Backend", cells: np.ndarray, rng: np.random.Generator,
             clock: "Clock") -> ProtocolResult:
        """The measurement itself (limits and cells already checked)."""

    def check_config(self, config: RunConfig) -> None:
        """Checks that need the run config beyond ``[limits]`` (read mode, read voltage); part of :meth:`check`."""

    def check_backend(self, backend: "Backend") -> None:
        """Checks that need the open backend itself (none of the built-in protocols has any); called by
        :meth:`run` after :meth:`check`, before the first operation. Prefer :meth:`check_config`: dry runs and the
        runner's early checks cannot apply this one."""

    def plan_on(self, cells: np.ndarray, device: Any) -> Plan:
        """:meth:`plan` for a rig whose ``[device]`` section is ``device`` (default: the device changes nothing;
        a protocol whose reads above the switching threshold are pulses overrides it)."""
        return self.plan(cells)

    def pulse_amplitudes(self) -> list[float]:
        """Amplitudes (V) of the programming pulses the protocol sends (half-select and energy checks)."""
        return []

    def largest_pulse_op(self, cells: np.ndarray) -> tuple[int, float] | None:
        """(device pulses in the largest single operation, pulse width in s), for the energy check."""
        return None

    def check_energy(self, limits: LimitsSection, device: Any, cells: np.ndarray) -> None:
        """Refuse if the largest pulse operation could exceed ``max_energy_per_op_J``, bounded as
        E = n·V²·Gmax·t (n device pulses, the largest |V|, every device at Gmax of ``device``)."""
        amps, op = self.pulse_amplitudes(), self.largest_pulse_op(cells)
        if not amps or op is None:
            return
        n, width = op
        v = max(abs(a) for a in amps)
        energy = n * v * v * float(device.g_max_S) * width
        if energy > limits.max_energy_per_op_J:
            raise LimitError("max_energy_per_op_J", energy, limits.max_energy_per_op_J,
                             f"protocol {self.name} largest pulse operation ({n} device pulses of {v:g} V, "
                             f"{width:g} s at Gmax)")

    # ----------------------------------------------------------------- the public API
    def check_limits(self, limits: LimitsSection) -> None:
        """Refuse the protocol as a whole if any value it would use exceeds ``limits`` (LimitError)."""
        for key, value, what in self.limit_items():
            allowed = getattr(limits, key)
            if not np.isfinite(value) or value > allowed:
                raise LimitError(key, float(value), float(allowed), f"protocol {self.name} {what}")

    def check(self, config: RunConfig, cells: np.ndarray) -> None:
        """Every check a run applies, from the run config alone: ``[limits]``, the energy per operation, half-select
        disturb between the chosen ``cells`` and :meth:`check_config`. Raises (LimitError, ConfigError,
        ValueError) before anything is sent."""
        from crossbar_protocols.cells import check_half_select

        self.check_limits(config.limits)
        self.check_energy(config.limits, config.device, cells)
        check_half_select(config.device, cells, self.pulse_amplitudes())
        self.check_config(config)

    def estimate(self, cells: Iterable[Iterable[int]] | np.ndarray, op_time_s: dict[str, float] | None = None,
                 device: Any = None) -> dict[str, Any]:
        """Dry-run estimate: ``{pulses, reads, duration_s, ops}`` (pulses and reads per device); with ``device``
        (the rig's ``[device]``) from :meth:`plan_on`, else from :meth:`plan`."""
        arr = normalize_cells(cells)
        plan = self.plan(arr) if device is None else self.plan_on(arr, device)
        times = {**DEFAULT_OP_TIME_S, **(op_time_s or {})}
        ops_s = sum(n * times.get(k, 1e-3) for k, n in plan.ops.items())
        return {"pulses": int(plan.pulses), "reads": int(plan.reads),
                "duration_s": float(ops_s + plan.pulse_time_s + plan.wait_s), "ops": dict(plan.ops),
                "wait_s": float(plan.wait_s)}

    def run(self, backend: "Backend", cells: Iterable[Iterable[int]] | np.ndarray,
            rng: np.random.Generator | None = None, *, clock: "Clock | None" = None) -> ProtocolResult:
        """Check cells and everything :meth:`check` checks, then measure. Sends nothing if a check fails."""
        from crossbar_protocols.clock import default_clock

        arr = normalize_cells(cells, backend.tile_shapes)
        self.check(backend.config, arr)
        self.check_backend(backend)
        rng = rng if rng is not None else np.random.default_rng(0)
        clk = clock if clock is not None else default_clock(backend)
        result = self._run(backend, arr, rng, clk)
        result.meta.setdefault("clock", type(clk).__name__)
        return result

    def params_dict(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json")


# --------------------------------------------------------------------- registry
_REGISTERED: dict[str, type[Protocol]] = {}


def register_protocol(cls: type[Protocol], name: str | None = None) -> type[Protocol]:
    """Register a protocol class in-process (usable as a decorator). Installed packages use the entry-point
    group ``crossbar_ctl.protocols`` instead."""
    key = name or cls.name
    if not key:
        raise ValueError(f"{cls.__name__} has no name")
    clash = RESERVED_NAMES & set(cls.Params.model_fields)
    if clash:
        raise ValueError(f"protocol {key}: parameter names {sorted(clash)} are reserved for run-config sections")
    _REGISTERED[key] = cls
    return cls


def available_protocols() -> list[str]:
    """Names of every installed or registered protocol."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} | set(_REGISTERED))


def protocol_class(name: str) -> type[Protocol]:
    """The class registered as ``name``; an unknown name lists the known ones."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                cls = ep.load()
            except Exception as err:  # a broken plugin must say which one
                raise ConfigError(f"protocol {name!r} ({ep.value}) failed to load: {err}") from err
            if not (isinstance(cls, type) and issubclass(cls, Protocol)):
                raise ConfigError(f"protocol {name!r} ({ep.value}) is not a crossbar_protocols Protocol")
            return cls
    known = ", ".join(available_protocols()) or "(none: is crossbar-ctl installed with pip install -e .?)"
    raise ConfigError(f"unknown protocol {name!r}; known protocols: {known}")


def make_protocol(name: str, params: dict[str, Any] | None = None) -> Protocol:
    """An instance of the protocol ``name`` with ``params``."""
    return protocol_class(name)(params or {})
