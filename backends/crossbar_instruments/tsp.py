"""The TSP command lines the ``smu-matrix`` backend sends (Keithley 2600B SMU, 707B/708B switch matrix), and the
parsers of their replies. One place for the grammar: the driver builds its lines here and the emulated rig
(:mod:`crossbar_instruments.tsp_instruments`) is tested against exactly these lines. ``hil/PROTOCOL.md`` lists them.

Every line that changes state ends with ``print(errorqueue.count)``, so that each exchange is a query: the reply
both paces the host (the instrument has finished the line) and says whether it queued an error. A TSP line
that fails to run prints nothing (the instrument aborts the chunk): the driver then times out and asks for
the error queue on its own. Numbers are written with ``%.9g`` (``0.2``, ``1e-06``, ``-1``) so that the bytes are
reproducible.
"""
from __future__ import annotations

import math
from typing import Sequence

from crossbar_ctl.errors import InstrumentError, ProtocolError

ERRCOUNT = "print(errorqueue.count)"
ERRNEXT = "print(errorqueue.next())"
IDN = "*IDN?"


def num(x: float) -> str:
    """A number as TSP source text (shortest round-trip-safe form up to 9 significant digits)."""
    return format(float(x), ".9g")


def checked(*statements: str) -> str:
    """Statements as one line that prints the error count when they have run."""
    return " ".join([*statements, ERRCOUNT])


# --------------------------------------------------------------------------- 2600B SMU
def smu_setup(channels: Sequence[str], compliance_A: float, nplc: float, range_V: float) -> str:
    """Reset, clear errors, and put both channels in DC-volts mode at 0 V with the compliance set (outputs off).
    The source range is fixed (autorange off) for ``range_V`` (``[limits].max_voltage_V``) so that pulses never
    wait for a range change. This is not a voltage limit: the SMU selects its lowest range that covers
    ``range_V`` (3 V gives 6 V on a 2602B, 20 V on a 2612B/2636B) and sources up to 101 % of that range. The
    guard against levels beyond ``[limits]`` is the driver's own check, before any line is sent."""
    out = ["reset()", "errorqueue.clear()"]
    for ch in channels:
        out += [f"{ch}.source.func = {ch}.OUTPUT_DCVOLTS", f"{ch}.source.autorangev = {ch}.AUTORANGE_OFF",
                f"{ch}.source.rangev = {num(range_V)}",
                f"{ch}.measure.autorangei = {ch}.AUTORANGE_ON", f"{ch}.measure.nplc = {num(nplc)}",
                f"{ch}.source.levelv = 0", f"{ch}.source.limiti = {num(compliance_A)}"]
    return checked(*out)


PERIOD_TIMER = 1  # starts each pulse: trigger.timer[1] drives the source stimulus
WIDTH_TIMER = 2  # ends each pulse: trigger.timer[2] drives the end-pulse stimulus


def pulse_setup(ch: str) -> str:
    """The drive channel's trigger model for pulse trains (set once; :func:`pulse_train` sets the times and
    counts). Arming starts the period timer, which emits one event every period (its delay) ``count`` times; each
    event starts a source action (the sweep level). Each source action's completion starts the width timer, whose
    single event ends the pulse: the channel returns to its idle level (``source.levelv``, 0 V) until the next
    period event. Nothing is measured."""
    p, w = f"trigger.timer[{PERIOD_TIMER}]", f"trigger.timer[{WIDTH_TIMER}]"
    return checked(f"{ch}.trigger.measure.action = {ch}.DISABLE", f"{ch}.trigger.source.action = {ch}.ENABLE",
                   f"{ch}.trigger.source.stimulus = {p}.EVENT_ID",
                   f"{ch}.trigger.endpulse.action = {ch}.SOURCE_IDLE", f"{ch}.trigger.endpulse.stimulus = {w}.EVENT_ID",
                   f"{p}.passthrough = false", f"{p}.stimulus = {ch}.trigger.ARMED_EVENT_ID",
                   f"{w}.count = 1", f"{w}.passthrough = false",
                   f"{w}.stimulus = {ch}.trigger.SOURCE_COMPLETE_EVENT_ID",
                   f"{ch}.trigger.arm.count = 1")


def outputs_on(channels: Sequence[str], compliance_A: float) -> str:
    """Compliance first, then output on, for each channel (levels are 0 V)."""
    out: list[str] = []
    for ch in channels:
        out += [f"{ch}.source.levelv = 0", f"{ch}.source.limiti = {num(compliance_A)}",
                f"{ch}.source.output = {ch}.OUTPUT_ON"]
    return checked(*out)


def outputs_off(channels: Sequence[str]) -> str:
    """Levels to 0 V (already ramped down by the caller) and outputs off."""
    out: list[str] = []
    for ch in channels:
        out += [f"{ch}.source.levelv = 0", f"{ch}.source.output = {ch}.OUTPUT_OFF"]
    return checked(*out)


def ramp_levels(start_V: float, stop_V: float, step_V: float) -> list[float]:
    """The DC levels a change from ``start_V`` to ``stop_V`` passes through, no step larger than ``step_V``
    (the last one is ``stop_V``; empty when there is nothing to change)."""
    if start_V == stop_V:
        return []
    n = max(1, math.ceil(abs(stop_V - start_V) / step_V - 1e-9))  # steps; the tolerance absorbs rounding
    return [start_V + (stop_V - start_V) * k / n for k in range(1, n)] + [stop_V]


def set_level(ch: str, levels: Sequence[float], dwell_s: float) -> str:
    """Step the DC level of ``ch`` through ``levels`` (a ramp), waiting ``dwell_s`` between steps."""
    out: list[str] = []
    for k, v in enumerate(levels):
        if k and dwell_s > 0:
            out.append(f"delay({num(dwell_s)})")
        out.append(f"{ch}.source.levelv = {num(v)}")
    return checked(*out)


def measure(drive: str, sense: str, v_read_V: float | None) -> str:
    """Measure the sense channel's current (the column held at 0 V) and whether either channel is in compliance;
    prints current, compliance flag, error count. With ``v_read_V`` the line first sets the drive level and
    returns it to 0 V afterwards (reads within one ramp step); with None the caller has ramped it."""
    pre = f"{drive}.source.levelv = {num(v_read_V)} " if v_read_V is not None else ""
    post = f"{drive}.source.levelv = 0 " if v_read_V is not None else ""
    return (f"{pre}xb_i = {sense}.measure.i() xb_k = {drive}.source.compliance or {sense}.source.compliance "
            f"{post}print(xb_i, xb_k, errorqueue.count)")


def pulse_train(ch: str, v_pulse_V: float, width_s: float, off_s: float, count: int, compliance_A: float) -> str:
    """``count`` pulses of ``v_pulse_V`` and ``width_s``, ``off_s`` apart (at the idle level), on ``ch`` through the
    trigger model of :func:`pulse_setup`; waits for the end (``count`` x (width + off) + width after arming)."""
    p, w = f"trigger.timer[{PERIOD_TIMER}]", f"trigger.timer[{WIDTH_TIMER}]"
    return checked(f"{ch}.trigger.source.linearv({num(v_pulse_V)}, {num(v_pulse_V)}, {count})",
                   f"{ch}.trigger.source.limiti = {num(compliance_A)}", f"{p}.delay = {num(width_s + off_s)}",
                   f"{p}.count = {count}", f"{w}.delay = {num(width_s)}", f"{ch}.trigger.count = {count}",
                   f"{ch}.trigger.initiate()", "waitcomplete()")


def output_state(channels: Sequence[str]) -> str:
    return f"print({', '.join(f'{ch}.source.output' for ch in channels)})"


# --------------------------------------------------------------------------- 707B/708B matrix
MATRIX_SETUP = checked("reset()", "errorqueue.clear()", "channel.connectrule = channel.BREAK_BEFORE_MAKE")
MATRIX_OPEN_ALL = checked('channel.open("allslots")')
MATRIX_CLOSED = 'print(channel.getclose("allslots"))'


def channel_id(slot: int, row: str, column: int) -> str:
    """A matrix crosspoint: slot digit, row letter, two-digit column (``1A01``)."""
    return f"{slot}{row}{column:02d}"


def exclusive_close(channels: Sequence[str]) -> str:
    """Close exactly ``channels`` (every other crosspoint opens; break before make)."""
    return checked(f'channel.exclusiveclose("{",".join(channels)}")')


# --------------------------------------------------------------------------- replies
def fields(reply: bytes, n: int, what: str) -> list[str]:
    """The tab-separated fields of one printed line; exactly ``n`` of them or ProtocolError."""
    try:
        text = reply.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what}: reply is not ASCII", reply) from None
    if not text.endswith("\n"):
        raise ProtocolError(f"{what}: reply not terminated by \\n", reply)
    parts = text[:-1].rstrip("\r").split("\t")
    if len(parts) != n:
        raise ProtocolError(f"{what}: expected {n} tab-separated value(s), got {len(parts)}", reply)
    return parts


def number(field: str, reply: bytes, what: str) -> float:
    try:
        value = float(field)
    except ValueError:
        raise ProtocolError(f"{what}: {field!r} is not a number", reply) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ProtocolError(f"{what}: {field!r} is not a finite number", reply)
    return value


def count(field: str, reply: bytes, what: str) -> int:
    value = number(field, reply, what)
    if value < 0 or value != int(value):
        raise ProtocolError(f"{what}: {field!r} is not a count", reply)
    return int(value)


def boolean(field: str, reply: bytes, what: str) -> bool:
    if field not in ("true", "false"):
        raise ProtocolError(f"{what}: {field!r} is not true/false", reply)
    return field == "true"


def error_entry(reply: bytes, instrument: str) -> InstrumentError:
    """``print(errorqueue.next())``: code, message, severity, node."""
    parts = fields(reply, 4, f"{instrument} errorqueue.next()")
    code = int(number(parts[0], reply, f"{instrument} error code"))
    return InstrumentError(code, f"{instrument}: {parts[1]}")
