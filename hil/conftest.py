"""The hardware-in-the-loop acceptance suite's rig: ``pytest hil --rig CONFIG``.

A rig config is a run config (TOML) naming the tester (``[backend] kind`` and ``address``) and its array. With
``address = "emulate"`` the suite starts ``crossbar-ctl emulate`` with the same file (TCP for kind ``visa``, a
pty for ``serial``) and stops it at the end. ``--rig`` may be repeated; without it the suite runs against both
emulated rigs (``hil/configs/emulated-visa.toml`` and ``emulated-serial.toml``).
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

CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_RIGS = [CONFIGS / "emulated-visa.toml", CONFIGS / "emulated-serial.toml"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--rig", action="append", default=[], metavar="CONFIG",
                     help="rig config (TOML) for the hil acceptance suite; repeatable; default: the emulated "
                          "VISA and serial rigs")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "rig" in metafunc.fixturenames:
        paths = [Path(p) for p in metafunc.config.getoption("rig")] or DEFAULT_RIGS
        metafunc.parametrize("rig", paths, indirect=True, scope="session", ids=[p.stem for p in paths])


@dataclass
class Rig:
    """A rig under test: its config (address resolved) and, if emulated, the emulator child."""

    name: str
    config: RunConfig
    emulator: EmulatedTester | None = None

    def connect(self) -> Backend:
        return connect(self.config)


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


@pytest.fixture
def backend(rig: Rig) -> Iterator[Backend]:
    """A fresh session with the rig's tester; closed (safe state) after the test."""
    with rig.connect() as b:
        yield b
