"""The run configuration: pydantic models for a whole run, loaded from one TOML file.

Sections: ``[backend]`` ``[array]`` ``[device]`` ``[read]`` ``[pulse]`` ``[limits]`` ``[training]``
``[logging]``, plus the top-level ``seed``. Unknown keys are errors; every error names the file, the key path
and what was expected. Units are SI; a key's name carries its unit where it is not obvious (``_V``, ``_s``).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crossbar_ctl.devices import DEVICE_MODELS, DeviceConfig, expand_preset
from crossbar_ctl.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendSection(_Section):
    kind: str = Field("sim", description='backend entry point: "sim", "visa", "serial" or any installed one')
    address: str = Field("", description="VISA resource or serial port/URL; unused by the simulator")
    timeout_s: float = Field(5.0, gt=0, description="timeout of one instrument call (s)")
    retries: int = Field(3, ge=0, description="reconnect attempts after a lost connection")
    backoff_s: float = Field(0.05, ge=0, description="first reconnect delay (s); doubles on every further attempt")
    visa_library: str = Field("@py", description='pyvisa library for kind "visa": "@py", "@ivi", "path.yaml@sim"')
    baud: int = Field(115200, gt=0, description='serial line rate (baud) for kind "serial"')
    parity: Literal["N", "E", "O"] = Field("N", description='serial parity for kind "serial": N, E or O')
    pipeline_writes: bool = Field(True, description="tester links: send the next command before reading a "
                                  "write's status (its error then surfaces at the next call); false waits for it")


class ArraySection(_Section):
    tiles: int = Field(2, ge=1, description="number of tiles (crossbar arrays)")
    rows: int | list[int] = Field([785, 101], description="rows per tile (one value for all, or one per tile)")
    cols: int | list[int] = Field([200, 20], description="columns per tile (one value for all, or one per tile)")
    mapping: Literal["differential"] = Field("differential", description="signed weight = (G+ - G-)/G_scale")

    @model_validator(mode="after")
    def _check_shapes(self) -> "ArraySection":
        for key in ("rows", "cols"):
            value = getattr(self, key)
            values = value if isinstance(value, list) else [value]
            if isinstance(value, list) and len(value) != self.tiles:
                raise ValueError(f"{key} lists {len(value)} values but tiles = {self.tiles}")
            if any(v < 1 for v in values):
                raise ValueError(f"{key} must be positive, got {value}")
        return self

    def shapes(self) -> list[tuple[int, int]]:
        """(rows, cols) of every tile."""
        rows = self.rows if isinstance(self.rows, list) else [self.rows] * self.tiles
        cols = self.cols if isinstance(self.cols, list) else [self.cols] * self.tiles
        return list(zip(rows, cols))


class ReadSection(_Section):
    v_read_V: float = Field(0.2, gt=0, description="full-scale read voltage of the row/column DACs (V)")
    read_noise: float = Field(0.0, ge=0, le=1, description="per-device read noise, std relative to G")
    dac_bits: int = Field(0, ge=0, le=24, description="input DAC resolution (0 = ideal)")
    adc_bits: int = Field(0, ge=0, le=24, description="output ADC resolution (0 = ideal)")
    adc_full_scale_A: float = Field(
        0.0, ge=0, description="ADC full scale |I| (A); 0 = v_read_V * Gmax * rows (worst case)"
    )


class PulseSection(_Section):
    v_set_V: float = Field(2.0, gt=0, description="potentiating (set) pulse amplitude (V)")
    v_reset_V: float = Field(-2.0, lt=0, description="depressing (reset) pulse amplitude (V)")
    width_s: float = Field(1e-6, gt=0, description="programming pulse width (s)")


class LimitsSection(_Section):
    max_voltage_V: float = Field(3.0, gt=0, description="largest |V| any line may be driven to (V)")
    max_pulse_width_s: float = Field(1e-3, gt=0, description="longest pulse (s)")
    max_pulses_per_device: int = Field(1000, ge=1, description="most pulses one device may take in one operation")
    compliance_current_A: float = Field(1e-4, gt=0, description="current compliance on sourcing operations (A)")
    max_energy_per_op_J: float = Field(1e-3, gt=0, description="largest estimated energy of one operation (J)")


class TrainingSection(_Section):
    dataset: Literal["mnist"] = Field("mnist", description="data set name (the bundled MNIST subset)")
    data_dir: str | None = Field(None, description="directory of MNIST-format IDX files instead of the bundled set")
    limit_train: int | None = Field(None, ge=1, description="use only the first n training images")
    limit_test: int | None = Field(None, ge=1, description="use only the first n test images")
    pool_px: Literal[1, 2, 4, 7, 14] = Field(
        1, description="average-pool the 28x28 images over p x p blocks: (28/p)^2 inputs (7: 16 inputs, for small rigs)")
    hidden: list[int] = Field([100], description="hidden layer widths (784-100-10 by default)")
    epochs: int = Field(10, ge=1, description="training epochs")
    batch_size: int = Field(64, ge=1, description="samples per update (1 for sgd)")
    learning_rate: float = Field(0.1, gt=0, description="learning rate (weight units per unit gradient)")
    lr_decay: float = Field(1.0, gt=0, le=1, description="learning rate factor per epoch: epoch e uses learning_rate * lr_decay^e")
    method: Literal["sgd", "mbgd", "svd", "streaming-pca", "nmf"] = Field("mbgd", description="gradient compressor")
    rank: int = Field(4, ge=1, description="rank k of the decomposition (svd, streaming-pca, nmf)")
    passes: int = Field(
        1, ge=1, description="passes over each batch for streaming-pca/nmf (1 = streaming; more buffers the batch)"
    )
    nmf_factors: Literal["shared", "separate"] = Field(
        "shared", description="nmf: one row factor for both sign parts (k(N+2M) floats) or one each (2k(N+M))"
    )
    nmf_pairs: Literal["net", "split"] = Field(
        "net", description="nmf: net = (w, h+ - h-) per component; split = (w, h+) and (w, -h-) as separate phases"
    )
    mode: Literal["rank-seq", "rank-sum"] = Field(
        "rank-seq", description="rank-seq: outer-product pulse phases; rank-sum: host reconstruction, row programs"
    )
    stochastic_rounding: bool = Field(True, description="round pulse counts stochastically (off: round to nearest)")
    outer_slots: int = Field(32, ge=1, description="pulse slots per rank-seq phase (the most pulses a device can take)")
    outer_mode: Literal["stochastic", "expected"] = Field(
        "stochastic", description="rank-seq coincidence: Binomial(slots, p*q), or its stochastically rounded mean"
    )
    weight_range: float = Field(0.5, gt=0, description="weight of a pair half a window apart: G_scale = (Gmax - Gmin)/(2 weight_range)")
    write_verify: bool = Field(True, description="program initial weights with read-back and correction")
    checkpoint_every: int = Field(1, ge=1, description="checkpoint every n epochs")


class LoggingSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    progress: bool = Field(True, description="show progress bars")
    op_log: bool = Field(True, description="append every array operation to the run's op log")
    op_log_flush: Literal["batch", "op"] = Field(
        "batch", description="op log file flush: at batch ends (at most every 50 ms; cheap: until then each operation "
        "is in the journal beside it, which a killed process cannot lose) or after every operation"
    )


_PIN = re.compile(r"^([1-6]):(\d{2})(?:-\1:(\d{2}))?$")
MATRIX_ROWS = "ABCDEFGH"
MATRIX_COLUMNS = 12


def expand_pins(spec: list[str], where: str) -> list[tuple[int, int]]:
    """Matrix pins as (slot, column): ``"1:03"`` is slot 1 column 3; ``"1:01-1:08"`` the eight columns 1-8 of
    slot 1 in order (a range stays within one slot)."""
    out: list[tuple[int, int]] = []
    for item in spec:
        m = _PIN.match(item.strip())
        if m is None:
            raise ValueError(f"{where}: pin {item!r} is not 'slot:column' (e.g. '1:03') or a range '1:01-1:08'")
        slot, first = int(m.group(1)), int(m.group(2))
        last = int(m.group(3)) if m.group(3) else first
        if not (1 <= first <= last <= MATRIX_COLUMNS):
            raise ValueError(f"{where}: pin {item!r}: columns must be 1..{MATRIX_COLUMNS}, ascending")
        out.extend((slot, c) for c in range(first, last + 1))
    return out


class SmuMatrixSection(_Section):
    """The rig of backend kind ``smu-matrix``: a Keithley 2600B SMU (``[backend].address``) whose two channels reach
    the array's lines through a 707B/708B switch matrix. The matrix's rows are wired to the instruments (the drive
    SMU's HI, the sense SMU's HI, and optionally ground); its columns (``slot:column`` pins) to the array's lines."""

    matrix_address: str = Field("", description="VISA resource of the switch matrix (707B/708B)")
    drive_smu: Literal["smua", "smub"] = Field("smua", description="SMU channel that drives the selected row")
    sense_smu: Literal["smua", "smub"] = Field("smub", description="SMU channel that holds the selected column and measures")
    drive_row: str = Field("A", description="matrix row wired to the drive SMU's HI")
    sense_row: str = Field("B", description="matrix row wired to the sense SMU's HI")
    ground_row: str = Field("C", description='matrix row wired to ground ("" if none)')
    unselected: Literal["half-select", "float"] = Field(
        "half-select", description="half-select: unselected lines grounded, row at +V/2 and column at -V/2; "
                                   "float: unselected lines open, row at V and column at 0 V")
    row_pins: list[list[str]] = Field([], description="per tile, the matrix pin of every array row (slot:column or ranges)")
    col_pins: list[list[str]] = Field([], description="per tile, the matrix pin of every array column")
    ramp_step_V: float = Field(0.5, gt=0, description="largest DC level change in one step; larger ones are ramped")
    ramp_dwell_s: float = Field(1e-3, ge=0, description="wait between ramp steps (s)")
    nplc: float = Field(1.0, ge=0.001, le=25, description="measurement integration time (power-line cycles)")
    min_pulse_width_s: float = Field(1e-4, gt=0, description="shortest pulse the SMU's trigger model produces (s)")
    pulse_off_s: float = Field(1e-4, gt=0, description="off time between pulses of a train (s): period = width + off")
    cell_read_s: float = Field(0.05, gt=0, description="estimated time of one device read, switching included (s)")
    cell_pulse_s: float = Field(0.05, gt=0, description="estimated time of one device pulse train, switching included, "
                                                        "the pulses themselves excluded (s)")

    @model_validator(mode="after")
    def _check_wiring(self) -> "SmuMatrixSection":
        if self.drive_smu == self.sense_smu:
            raise ValueError("drive_smu and sense_smu must be different SMU channels")
        rows = [r for r in (self.drive_row, self.sense_row, self.ground_row) if r]
        for r in rows:
            if len(r) != 1 or r not in MATRIX_ROWS:
                raise ValueError(f"matrix rows are one letter A-H, got {r!r}")
        if len(set(rows)) != len(rows):
            raise ValueError(f"drive_row, sense_row and ground_row must differ, got {rows}")
        if self.unselected == "half-select" and not self.ground_row:
            raise ValueError('unselected = "half-select" grounds unselected lines: it needs a ground_row')
        if len(self.row_pins) != len(self.col_pins):
            raise ValueError(f"row_pins lists {len(self.row_pins)} tiles but col_pins {len(self.col_pins)}")
        seen: dict[tuple[int, int], str] = {}
        for t, (rp, cp) in enumerate(zip(self.row_pins, self.col_pins)):
            for key, spec in (("row_pins", rp), ("col_pins", cp)):
                for i, pin in enumerate(expand_pins(spec, f"{key}[{t}]")):
                    here = f"{key}[{t}] line {i}"
                    if pin in seen:
                        raise ValueError(f"pin {pin[0]}:{pin[1]:02d} is wired twice: {seen[pin]} and {here}")
                    seen[pin] = here
        return self

    def train_s(self, count: int, width_s: float) -> float:
        """Duration of one trigger-model train of ``count`` pulses of ``width_s`` (s): pulse k starts at
        k x (width + pulse_off_s), k = 1..count, and the last one lasts ``width_s``."""
        return count * (width_s + self.pulse_off_s) + width_s if count > 0 else 0.0

    def op_time_s(self, shapes: list[tuple[int, int]], pulses: int = 0, width_s: float = 0.0) -> dict[str, float]:
        """Estimated seconds per operation on this rig: composed array operations visit every device of the
        largest tile (reads at ``cell_read_s``, pulse trains at ``cell_pulse_s`` plus, with ``pulses``, the
        :meth:`train_s` of ``pulses`` pulses of ``width_s``: an upper bound for sparse ones)."""
        cells = max(r * c for r, c in shapes)
        r, p = self.cell_read_s, self.cell_pulse_s + self.train_s(pulses, width_s)
        return {"read_vmm": cells * r, "read_vmm_t": cells * r, "read_conductance": cells * r, "program": cells * p,
                "outer_pulse": cells * p, "read_cell": r, "pulse_cell": p}

    def pins(self, tile: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(row pins, column pins) of ``tile`` as (slot, column) pairs."""
        return (expand_pins(self.row_pins[tile], f"row_pins[{tile}]"),
                expand_pins(self.col_pins[tile], f"col_pins[{tile}]"))


class RunConfig(_Section):
    """A whole run. ``source`` is the file it came from (for messages), not a TOML key."""

    seed: int = Field(0, ge=0, description="seed of every random draw in the run")
    backend: BackendSection = BackendSection()
    array: ArraySection = ArraySection()
    device: DeviceConfig = Field(default_factory=lambda: _default_device())
    read: ReadSection = ReadSection()
    pulse: PulseSection = PulseSection()
    limits: LimitsSection = LimitsSection()
    training: TrainingSection = TrainingSection()
    logging: LoggingSection = LoggingSection()
    smu_matrix: SmuMatrixSection | None = None

    @field_validator("device", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if "model" not in value and "preset" not in value:
                value = {"preset": DEFAULT_DEVICE_PRESET, **value}  # keys given alone override the default device
            return expand_preset(value)
        return value

    @model_validator(mode="after")
    def _check_pulses_within_limits(self) -> "RunConfig":
        for key, v in (("v_set_V", self.pulse.v_set_V), ("v_reset_V", self.pulse.v_reset_V)):
            if abs(v) > self.limits.max_voltage_V:
                raise ValueError(
                    f"pulse.{key} = {v:g} V exceeds limits.max_voltage_V = {self.limits.max_voltage_V:g} V"
                )
        if self.pulse.width_s > self.limits.max_pulse_width_s:
            raise ValueError(
                f"pulse.width_s = {self.pulse.width_s:g} s exceeds limits.max_pulse_width_s = "
                f"{self.limits.max_pulse_width_s:g} s"
            )
        if self.read.v_read_V > self.limits.max_voltage_V:
            raise ValueError(f"read.v_read_V = {self.read.v_read_V:g} V exceeds limits.max_voltage_V")
        return self

    @model_validator(mode="after")
    def _check_smu_matrix(self) -> "RunConfig":
        if self.backend.kind != "smu-matrix":
            return self
        rig = self.smu_matrix
        if rig is None:
            raise ValueError('backend.kind = "smu-matrix" needs an [smu_matrix] section (matrix address, channel map)')
        shapes = self.array.shapes()
        if len(rig.row_pins) != len(shapes):
            raise ValueError(f"smu_matrix.row_pins lists {len(rig.row_pins)} tiles but array.tiles = {len(shapes)}")
        for t, (rows, cols) in enumerate(shapes):
            rp, cp = rig.pins(t)
            if (len(rp), len(cp)) != (rows, cols):
                raise ValueError(f"smu_matrix pins of tile {t} wire {len(rp)} rows x {len(cp)} columns but the "
                                 f"array section says {rows} x {cols}")
        if self.pulse.width_s < rig.min_pulse_width_s:
            raise ValueError(f"pulse.width_s = {self.pulse.width_s:g} s is shorter than the SMU's shortest pulse "
                             f"(smu_matrix.min_pulse_width_s = {rig.min_pulse_width_s:g} s)")
        lim = self.limits  # the longest line: one train of max_pulses_per_device pulses of the longest width
        train_s = rig.train_s(lim.max_pulses_per_device, lim.max_pulse_width_s)
        if self.backend.timeout_s < train_s + SMU_LINE_MARGIN_S:
            raise ValueError(f"backend.timeout_s = {self.backend.timeout_s:g} s is shorter than the longest pulse "
                             f"train plus {SMU_LINE_MARGIN_S:g} s: limits.max_pulses_per_device = "
                             f"{lim.max_pulses_per_device} pulses of limits.max_pulse_width_s = "
                             f"{lim.max_pulse_width_s:g} s, one every "
                             f"{lim.max_pulse_width_s + rig.pulse_off_s:g} s (smu_matrix.pulse_off_s = "
                             f"{rig.pulse_off_s:g} s), take {train_s:.4g} s; raise the timeout or lower the limits")
        return self


DEFAULT_DEVICE_PRESET = "agsi"
SMU_LINE_MARGIN_S = 0.1  # smu-matrix: timeout_s must exceed the longest pulse train by this (the line's round trip)


def _default_device() -> Any:
    from crossbar_ctl.devices import NeuroSimExpDevice

    preset = expand_preset({"preset": DEFAULT_DEVICE_PRESET})
    return NeuroSimExpDevice(**{k: v for k, v in preset.items() if k != "model"})


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration ({err.error_count()} error(s))"]
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        # drop the discriminator tag pydantic inserts for tagged unions ([device].neurosim-exp.x -> [device].x)
        if len(loc) >= 2 and loc[0] == "device" and loc[1] in DEVICE_MODELS:
            loc = [loc[0]] + loc[2:]
        if len(loc) > 1:
            path = f"[{loc[0]}]." + ".".join(loc[1:])
        elif loc:
            path = f"[{loc[0]}]" if loc[0] in RunConfig.model_fields and loc[0] != "seed" else loc[0]
        else:
            path = "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here)"
        got = e.get("input")
        got_text = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {got!r})"
        lines.append(f"  {path}: {msg}{got_text}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> RunConfig:
    """Validate a nested dict into a :class:`RunConfig`; errors name ``source`` and the key path."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
    except ValueError as err:  # preset expansion
        raise ConfigError(f"{source}: [device]: {err}") from None


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """Parse a TOML file; a missing, non-UTF-8 or malformed file raises ConfigError naming it (``what``: its kind)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such {what}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not UTF-8 text: {err}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a TOML run file (``None``: the defaults) and apply ``key.path=value`` overrides."""
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        data = read_toml(path, "config file")
    for item in overrides or []:
        apply_override(data, item, source="--set")
    return config_from_dict(data, source)


def apply_override(data: dict[str, Any], item: str, source: str = "--set") -> None:
    """Apply ``section.key=value`` (value parsed as a TOML value, else taken as a string) to ``data``."""
    if "=" not in item:
        raise ConfigError(f"{source} {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source} {item!r}: {part} is not a section")
    node[parts[-1]] = value


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as plain TOML-able data (None values dropped)."""
    return _drop_none(cfg.model_dump(mode="json"))


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    return obj


def dump_toml(cfg: RunConfig) -> str:
    """The resolved config as TOML text."""
    import tomli_w

    return tomli_w.dumps(config_to_dict(cfg))


def default_toml() -> str:
    """A complete default run file, every key commented with its meaning (``config show-defaults``)."""
    import tomli_w

    cfg = RunConfig()
    out = [
        "# crossbar-ctl run configuration (all units SI). Every key is shown with its default.",
        "# [device] may instead be given as  preset = \"agsi\"  plus any keys to override.",
        "",
        f"seed = {cfg.seed}  # {RunConfig.model_fields['seed'].description}",
    ]
    for name in ("backend", "array", "device", "read", "pulse", "limits", "training", "logging"):
        section = getattr(cfg, name)
        out.append("")
        out.append(f"[{name}]")
        for key, field in type(section).model_fields.items():
            value = getattr(section, key)
            if value is None:
                out.append(f"# {key} =   # {field.description} (unset by default)")
                continue
            text = json.dumps(value) if isinstance(value, list) else tomli_w.dumps({"v": value}).strip()[4:]
            out.append(f"{key} = {text}  # {field.description}")
    out += ["", "# [smu_matrix]: only for [backend] kind = \"smu-matrix\" (a Keithley 2600B SMU + a 707B/708B switch",
            "# matrix): matrix_address, the channel map (row_pins, col_pins) and biasing; every key with its meaning is",
            "# in hil/configs/lab-smu-matrix.toml."]
    return "\n".join(out) + "\n"
