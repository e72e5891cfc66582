"""Protocol framework: registry, parameters, limits checked before any operation, estimates, cell specs, clocks."""
from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np
import pytest

from crossbar_ctl.config import config_from_dict
from crossbar_ctl.errors import ConfigError, LimitError
from crossbar_protocols import Plan, Protocol, ProtocolParams, ProtocolResult, make_protocol, register_protocol
from crossbar_protocols.base import DEFAULT_OP_TIME_S, _REGISTERED, available_protocols, protocol_class
from crossbar_protocols.cells import parse_cells
from crossbar_protocols.clock import SimulatedClock, WallClock, default_clock
from crossbar_sim.backend import SimBackend

BUILTIN = ["array-map", "endurance", "iv-sweep", "ltp-ltd", "read-disturb", "retention", "write-verify"]


def sim(rows: int = 2, cols: int = 4, tiles: int = 1, **device: Any) -> SimBackend:
    return SimBackend(config_from_dict({"seed": 3, "array": {"tiles": tiles, "rows": rows, "cols": cols},
                                        "device": {"preset": "agsi", **device}}))


def test_builtin_protocols_come_from_the_entry_point_group() -> None:
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="crossbar_ctl.protocols")}
    assert set(BUILTIN) <= names
    for name in BUILTIN:
        cls = protocol_class(name)
        assert issubclass(cls, Protocol) and cls.name == name


def test_a_user_protocol_registers_in_process_and_runs() -> None:
    class CountParams(ProtocolParams):
        reads: int = 3

    class ReadTwice(Protocol):
        """Reads each cell `reads` times."""

        name = "read-twice-test"
        Params = CountParams

        def limit_items(self) -> Iterable[tuple[str, float, str]]:
            return []

        def plan(self, cells: np.ndarray) -> Plan:
            return Plan(ops={"read_cell": self.params.reads * len(cells)}, reads=self.params.reads * len(cells))

        def _run(self, backend: Any, cells: np.ndarray, rng: Any, clock: Any) -> ProtocolResult:
            i = [backend.read_cell(*c) for c in cells.tolist() for _ in range(self.params.reads)]
            return ProtocolResult(self.name, self.params_dict(), cells, {"i_A": np.array(i)}, {"i_A": "A"})

    register_protocol(ReadTwice)
    try:
        assert "read-twice-test" in available_protocols()
        proto = make_protocol("read-twice-test", {"reads": 2})
        b = sim()
        res = proto.run(b, [(0, 0, 0), (0, 1, 3)])
        assert len(res.table["i_A"]) == 4 and b.seq == 4
    finally:
        _REGISTERED.pop("read-twice-test", None)


def test_parameter_names_that_shadow_config_sections_are_refused() -> None:
    class Bad(ProtocolParams):
        device: int = 0

    class BadProto(Protocol):
        name = "bad"
        Params = Bad

    with pytest.raises(ValueError, match="reserved"):
        register_protocol(BadProto)


def test_unknown_protocol_and_unknown_parameter_are_named() -> None:
    with pytest.raises(ConfigError, match="unknown protocol 'nope'.*ltp-ltd"):
        protocol_class("nope")
    with pytest.raises(ConfigError, match="cylces: unknown parameter"):
        make_protocol("ltp-ltd", {"cylces": 3})
    with pytest.raises(ConfigError, match="v_reset_V"):
        make_protocol("ltp-ltd", {"v_reset_V": 2.0})  # depression needs a negative amplitude


OVER_LIMIT = [  # (protocol, params, limit that refuses it, value)
    ("ltp-ltd", {"v_set_V": 3.5}, "max_voltage_V", 3.5),
    ("ltp-ltd", {"width_s": 2e-3}, "max_pulse_width_s", 2e-3),
    ("ltp-ltd", {"pulses_per_step": 2000, "pulses_ltp": 2000, "pulses_ltd": 2000}, "max_pulses_per_device", 2000),
    ("iv-sweep", {"v_min_V": -3.2}, "max_voltage_V", 3.2),  # only the far end of the sweep is over
    ("iv-sweep", {"compliance_A": 1e-3}, "compliance_current_A", 1e-3),
    ("iv-sweep", {"width_s": 2e-3, "mode": "pulsed"}, "max_pulse_width_s", 2e-3),
    ("iv-sweep", {"width_s": 2e-3}, "max_pulse_width_s", 2e-3),  # the staircase's dwell too
    ("retention", {"v_program_V": -4.0}, "max_voltage_V", 4.0),
    ("endurance", {"pulses_per_step": 1500, "pulses_set": 1500}, "max_pulses_per_device", 1500),
    ("read-disturb", {"v_read_V": -3.1}, "max_voltage_V", 3.1),
    ("array-map", {"width_s": 1.0}, "max_pulse_width_s", 1.0),
    ("write-verify", {"v_reset_V": -5.0}, "max_voltage_V", 5.0),
]


@pytest.mark.parametrize("name,params,limit,value", OVER_LIMIT)
def test_over_limit_parameter_is_refused_before_any_operation(name: str, params: dict, limit: str,
                                                              value: float) -> None:
    b = sim()
    ops: list[Any] = []
    b.add_listener(ops.append)
    g0 = b.true_conductance(0)
    proto = make_protocol(name, params)
    with pytest.raises(LimitError) as err:
        proto.run(b, [(0, 0, 0), (0, 1, 1)])
    assert err.value.limit == limit and err.value.value == pytest.approx(value)
    assert limit in str(err.value) and name in str(err.value)
    assert ops == [] and b.seq == 0
    assert np.array_equal(b.true_conductance(0), g0)


def test_energy_per_operation_is_bounded_before_any_operation() -> None:
    cfg = config_from_dict({"array": {"tiles": 1, "rows": 4, "cols": 4}, "limits": {"max_energy_per_op_J": 1e-12}})
    b = SimBackend(cfg)
    cells = [(0, r, c) for r in range(4) for c in range(4)]
    # 16 devices x 1 pulse x (2 V)² x 38.5 nS x 1 µs = 2.5e-12 J in one program: refused; one device: 1.5e-13 J
    with pytest.raises(LimitError) as err:
        make_protocol("ltp-ltd", {"mode": "parallel", "pulses_ltp": 2, "pulses_ltd": 2}).run(b, cells)
    assert err.value.limit == "max_energy_per_op_J" and err.value.value == pytest.approx(16 * 4 * 38.462e-9 * 1e-6)
    assert b.seq == 0
    make_protocol("ltp-ltd", {"mode": "cell", "pulses_ltp": 2, "pulses_ltd": 2}).run(b, cells[:2])


DETERMINISTIC_COUNTS = [  # protocols whose operation count does not depend on what they measure
    ("ltp-ltd", {"pulses_ltp": 6, "pulses_ltd": 4, "pulses_per_step": 2, "cycles": 2, "prepare_pulses": 3}),
    ("ltp-ltd", {"pulses_ltp": 6, "pulses_ltd": 4, "cycles": 2, "mode": "parallel"}),
    ("iv-sweep", {"step_V": 0.1, "cycles": 2}),
    ("iv-sweep", {"step_V": 0.1, "cycles": 2, "mode": "pulsed", "width_s": 3e-6}),
    ("retention", {"duration_s": 10, "interval_s": 2}),
    ("retention", {"duration_s": 10, "interval_s": 2, "mode": "parallel"}),
    ("read-disturb", {"reads": 7}),
    ("array-map", {"repeats": 1, "pulses_set": 25, "pulses_reset": 20}),
    ("array-map", {"mode": "cell", "pulse_response": False}),
    ("endurance", {"cycles": 3, "pulses_set": 25, "pulses_reset": 30, "window_threshold": 1.01}),
]


@pytest.mark.parametrize("name,params", DETERMINISTIC_COUNTS)
def test_estimate_counts_exactly_the_operations_and_pulses_sent(name: str, params: dict) -> None:
    """Operations, device pulses and pulse time counted from the operations sent. A read above the switching
    threshold is a pulse (iv-sweep staircase); a program of n pulses per device takes n widths, once per tile."""
    b = sim(tiles=2)
    ops: list[Any] = []
    b.add_listener(ops.append)
    proto = make_protocol(name, params)
    cells = [(0, 0, 1), (0, 1, 2), (0, 1, 3), (1, 0, 0)]
    est = proto.estimate(cells, device=b.config.device)
    proto.run(b, cells)
    kinds: dict[str, int] = {}
    pulses = 0
    pulse_time_s = 0.0
    v_th = b.config.device.v_threshold_V
    for rec in ops:
        kinds[rec.kind] = kinds.get(rec.kind, 0) + 1
        if rec.kind == "pulse_cell":
            pulses += rec.params["count"]
            pulse_time_s += rec.params["count"] * rec.params["width_s"]
        elif rec.kind == "program":
            pulses += int(np.abs(rec.params["pulses"]).sum())
            pulse_time_s += int(np.abs(rec.params["pulses"]).max()) * rec.params["width_s"]
        elif rec.kind == "read_cell" and abs(rec.params["v_read_V"]) >= v_th:
            pulses += 1
            pulse_time_s += proto.params.width_s
    assert {k: v for k, v in est["ops"].items() if v} == kinds
    assert est["pulses"] == pulses
    if name == "iv-sweep":
        assert pulses > 0  # the staircase steps above 1.2 V and the pulsed mode's pulses
    ops_s = sum(n * DEFAULT_OP_TIME_S[k] for k, n in kinds.items())
    assert est["duration_s"] == pytest.approx(ops_s + pulse_time_s + est["wait_s"], rel=1e-12)


def test_write_verify_estimate_is_an_upper_bound() -> None:
    b = sim()
    ops: list[Any] = []
    b.add_listener(ops.append)
    proto = make_protocol("write-verify", {"max_pulses": 60})
    est = proto.estimate([(0, 0, 0), (0, 0, 1)])
    res = proto.run(b, [(0, 0, 0), (0, 0, 1)])
    assert len(ops) <= sum(est["ops"].values())
    assert res.summary["pulses_total"] <= est["pulses"]


def test_cell_specs() -> None:
    shapes = [(4, 8), (2, 3)]
    assert parse_cells("0:0:0-7", shapes).tolist() == [[0, 0, c] for c in range(8)]
    assert len(parse_cells("1:*:*", shapes)) == 6
    assert parse_cells("0:1:2,1:0:0", shapes).tolist() == [[0, 1, 2], [1, 0, 0]]
    assert len(parse_cells("*:0:0", shapes)) == 2
    with pytest.raises(IndexError):
        parse_cells("0:4:0", shapes)
    with pytest.raises(ValueError, match="TILE:ROWS:COLS"):
        parse_cells("0:1", shapes)
    with pytest.raises(ValueError):
        make_protocol("ltp-ltd").run(sim(), [(0, 0, 0), (0, 0, 0)])  # repeated cell


def test_clocks() -> None:
    c = SimulatedClock()
    t = time.monotonic()
    c.sleep(3600.0)
    assert c.now() == 3600.0 and time.monotonic() - t < 0.5
    w = WallClock()
    w.sleep(0.02)
    assert w.now() >= 0.02
    assert isinstance(default_clock(sim()), SimulatedClock)

    class Fake:
        kind = "visa"

    assert isinstance(default_clock(Fake()), WallClock)  # type: ignore[arg-type]
    assert isinstance(default_clock(Fake(), simulated=True), SimulatedClock)  # type: ignore[arg-type]


def test_half_select_switching_between_chosen_cells_is_refused_before_any_operation() -> None:
    b = sim(rows=3, cols=3)
    proto = make_protocol("ltp-ltd", {"v_set_V": 2.6, "v_reset_V": -2.0, "pulses_ltp": 4, "pulses_ltd": 4})
    with pytest.raises(ConfigError, match="half-select.*row 0"):
        proto.run(b, [(0, 0, 0), (0, 0, 2)])  # 1.3 V on the shared row is above the 1.2 V threshold
    assert b.seq == 0
    proto.run(b, [(0, 0, 0), (0, 1, 1), (0, 2, 2)])  # distinct rows and columns: allowed
    make_protocol("ltp-ltd", {"pulses_ltp": 4, "pulses_ltd": 4}).run(sim(), [(0, 0, 0), (0, 0, 1)])  # 1 V: fine


def test_iv_sweep_estimate_counts_steps_at_or_above_the_threshold_as_pulses() -> None:
    proto = make_protocol("iv-sweep", {"v_max_V": 2.0, "v_min_V": -1.5, "step_V": 0.1, "cycles": 3})
    v, _ = proto.staircase()
    assert np.count_nonzero(v == 1.2) == 2  # the threshold itself is on the staircase (up and down)
    # per loop |V| >= 1.2 V: 0 -> 2 V: 9 steps (1.2 ... 2.0); 2 V -> 0: 8 (1.9 ... 1.2); 0 -> -1.5 V: 4; back: 3
    cfg = config_from_dict({"device": {"preset": "agsi"}})
    est = proto.estimate([(0, 0, 0), (0, 1, 1)], device=cfg.device)
    assert est["pulses"] == 2 * 3 * (9 + 8 + 4 + 3)
    assert est["ops"] == {"read_cell": 2 * 3 * len(v)}
    assert proto.estimate([(0, 0, 0)])["pulses"] == 3 * np.count_nonzero(v)  # no device: every nonzero step
    pulsed = make_protocol("iv-sweep", {"v_max_V": 2.0, "v_min_V": -1.5, "step_V": 0.1, "mode": "pulsed"})
    est = pulsed.estimate([(0, 0, 0)], device=cfg.device)
    assert est["ops"] == {"pulse_cell": len(v) - 2, "read_cell": len(v)}  # no pulse at the two 0 V steps
    assert est["pulses"] == len(v) - 2


def test_iv_sweep_half_select_and_energy_are_checked_before_any_operation() -> None:
    b = sim(rows=3, cols=3)
    proto = make_protocol("iv-sweep", {"v_max_V": 2.8, "step_V": 0.2})
    with pytest.raises(ConfigError, match="2.8 V half-select.*row 0"):
        proto.run(b, [(0, 0, 0), (0, 0, 2)])  # 1.4 V on the shared row: above the 1.2 V threshold
    with pytest.raises(ConfigError, match="half-select.*column 1"):
        make_protocol("iv-sweep", {"v_min_V": -2.6, "mode": "pulsed"}).run(b, [(0, 0, 1), (0, 2, 1)])
    assert b.seq == 0
    proto.run(b, [(0, 0, 0), (0, 1, 1)])  # distinct rows and columns
    cfg = config_from_dict({"array": {"tiles": 1, "rows": 2, "cols": 2}, "limits": {"max_energy_per_op_J": 1e-16}})
    with pytest.raises(LimitError) as err:  # one device, (2.8 V)² x 38.462 nS x 1 µs = 3.0e-13 J
        make_protocol("iv-sweep", {"v_max_V": 2.8}).run(SimBackend(cfg), [(0, 0, 0)])
    assert err.value.limit == "max_energy_per_op_J" and err.value.value == pytest.approx(2.8 ** 2 * 38.462e-9 * 1e-6)


def test_iv_sweep_read_voltage_rules() -> None:
    with pytest.raises(ConfigError, match="pulsed"):
        make_protocol("iv-sweep", {"v_read_V": 0.2})  # staircase reads at the step voltage
    with pytest.raises(ConfigError, match="above the switching threshold"):
        make_protocol("iv-sweep", {"mode": "pulsed", "v_read_V": 1.5}).run(sim(), [(0, 0, 0)])
    with pytest.raises(LimitError, match="v_read_V"):
        make_protocol("iv-sweep", {"mode": "pulsed", "v_read_V": -3.5}).run(sim(), [(0, 0, 0)])


def test_iv_sweep_compliance_below_the_rigs_is_refused_on_an_instrument() -> None:
    """An instrument backend sources with the rig's [limits].compliance_current_A: a lower sweep compliance it
    cannot apply is refused from the config alone (before a connection); on the simulator it is a flag level."""
    iv = make_protocol("iv-sweep", {"compliance_A": 3e-8})
    visa = config_from_dict({"backend": {"kind": "visa", "address": "TCPIP::192.0.2.1::5025::SOCKET"},
                             "array": {"tiles": 1, "rows": 2, "cols": 4}, "limits": {"compliance_current_A": 1e-4}})
    with pytest.raises(ConfigError, match=r"compliance_A = 3e-08 A is below .*compliance_current_A = 0.0001 A"):
        iv.check(visa, np.array([[0, 0, 0]]))
    make_protocol("iv-sweep", {"compliance_A": 1e-4}).check(visa, np.array([[0, 0, 0]]))  # the rig's own: fine
    out = iv.run(sim(), [(0, 0, 0)])  # the simulator: measured, flagged at 30 nA and above, never clamped
    i = np.abs(out.table["i_A"])
    assert out.table["compliance"].sum() == np.count_nonzero(i >= 3e-8) > 0 and i.max() > 3e-8


def test_read_disturb_reads_above_the_threshold_are_pulses_and_half_select_checked() -> None:
    cfg = config_from_dict({"device": {"preset": "agsi"}})  # threshold 1.2 V, width_ref_s 1 µs
    low = make_protocol("read-disturb", {"v_read_V": 0.2, "reads": 50, "program_pulses": 0})
    assert low.estimate([(0, 0, 0), (0, 1, 1)], device=cfg.device)["pulses"] == 0
    high = make_protocol("read-disturb", {"v_read_V": 2.6, "reads": 50, "program_pulses": 5})
    est = high.estimate([(0, 0, 0), (0, 1, 1)], device=cfg.device)
    assert est["pulses"] == 2 * (5 + 50)  # the programming pulses and every read
    b = sim(rows=3, cols=3)
    with pytest.raises(ConfigError, match="half-select.*row 0"):  # 1.3 V on the shared row
        high.run(b, [(0, 0, 0), (0, 0, 2)])
    assert b.seq == 0
    high.run(b, [(0, 0, 0), (0, 1, 1)])  # distinct lines: allowed
