"""The hardware-in-the-loop acceptance suite's rig: ``pytest hil --rig CONFIG``.

A rig config is a run config (TOML) naming the tester (``[backend] kind`` and ``address``) and its array. With
``address = "emulate"`` the suite starts ``crossbar-ctl emulate`` with the same file (TCP for kind ``visa``, a
pty for ``serial``, two TCP ports for ``smu-matrix``) and stops it at the end. ``--rig`` may be repeated; without it
the suite runs against the three emulated rigs (``hil/configs/emulated-{visa,serial,smu-matrix}.toml``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from crossbar_ctl.backend import Backend, connect
from crossbar_ctl.config import RunConfig, load_config
from crossbar_instruments.launch import EMULATE, TRANSPORT_OF_KIND, EmulatedTester, emulated_tester, with_address
from crossbar_instruments.transport import SerialTransport, Transport, VisaTransport

CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_RIGS = [CONFIGS / "emulated-visa.toml", CONFIGS / "emulated-serial.toml", CONFIGS / "emulated-smu-matrix.toml"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--rig", action="append", default=[], metavar="CONFIG",
                     help="rig config (TOML) for the hil acceptance suite; repeatable; default: the emulated "
                          "VISA and serial rigs")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "holds_network: needs a rig whose array holds its [training] network")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "rig" in metafunc.fixturenames:
        paths = [Path(p) for p in metafunc.config.getoption("rig")] or DEFAULT_RIGS
        if metafunc.definition.get_closest_marker("holds_network"):
            paths = [p for p in paths if not p.is_file() or holds_network(load_config(p))]
        metafunc.parametrize("rig", paths, indirect=True, scope="session", ids=[p.stem for p in paths])


def holds_network(cfg: RunConfig) -> bool:
    """Whether the rig's tiles can hold its [training] MLP ((28/pool_px)² inputs, the hidden widths, 10 outputs): layer l
    needs n_in + 1 rows and 2 n_out columns (differential pairs) on tile l."""
    sizes = [(28 // cfg.training.pool_px) ** 2, *cfg.training.hidden, 10]
    shapes = cfg.array.shapes()
    return len(shapes) >= len(sizes) - 1 and all(
        r >= n_in + 1 and c >= 2 * n_out for (r, c), n_in, n_out in zip(shapes, sizes[:-1], sizes[1:]))


@dataclass
class Rig:
    """A rig under test: its config (address resolved) and, if emulated, the emulator child."""

    name: str
    config: RunConfig
    emulator: EmulatedTester | None = None

    def connect(self) -> Backend:
        return connect(self.config)

    def fresh_is_safe(self) -> bool:
        """Ask the rig on fresh links, outside any backend session, whether it is in its safe state."""
        if self.config.backend.kind == "smu-matrix":
            from crossbar_instruments.smu_matrix import rig_is_safe

            return rig_is_safe(self.config)
        return fresh_query(self.config, "SYST:SAFE?") == "1" and fresh_query(self.config, "OUTP?") == "0"


def fresh_query(cfg: RunConfig, line: str) -> str:
    """One query on a new link to an array tester, outside any backend session (no *RST first)."""
    b = cfg.backend
    t: Transport = (VisaTransport(b.address, b.timeout_s, b.visa_library) if b.kind == "visa"
                    else SerialTransport(b.address, b.timeout_s, b.baud, b.parity))
    t.open()
    try:
        t.write(line.encode("ascii") + b"\n")
        return t.read_message()[:-1].decode("ascii")
    finally:
        t.close()


@pytest.fixture(scope="session")
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    path = Path(request.param)
    if not path.is_file():
        pytest.fail(f"--rig {path}: no such file", pytrace=False)
    cfg = load_config(path)
    if cfg.backend.address != EMULATE:
        yield Rig(path.stem, cfg)
        return
    kind = cfg.backend.kind
    if kind not in TRANSPORT_OF_KIND:
        pytest.fail(f"{path}: address = \"emulate\" needs kind visa or serial, not {kind!r}", pytrace=False)
    with emulated_tester(cfg, TRANSPORT_OF_KIND[kind]) as emu:
        yield Rig(path.stem, with_address(cfg, kind, emu.address), emu)
    if "array left in its safe state" not in emu.stderr:  # pragma: no cover - reported, not expected
        sys.stderr.write(f"\nemulated tester of {path.stem} did not report its safe state:\n{emu.stderr}\n")
    if "hazard:" in emu.stderr:  # the emulated smu-matrix rig saw a short, hot switching or DC over threshold
        pytest.fail(f"emulated rig {path.stem} recorded hazards:\n{emu.stderr}", pytrace=False)


@pytest.fixture
def backend(rig: Rig) -> Iterator[Backend]:
    """A fresh session with the rig's tester; closed (safe state) after the test."""
    with rig.connect() as b:
        yield b
