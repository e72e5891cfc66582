"""Start ``crossbar-ctl emulate`` in a child process for a run config, the way a lab starts its tester.

:func:`emulated_tester` writes the config (with ``[backend].kind = "sim"``) to a TOML file, starts the emulator on
a free loopback TCP port (``transport="tcp"``) or a pseudo-terminal (``"pty"``), reads the address it prints,
yields an :class:`EmulatedTester`, and on exit stops it with SIGTERM (it leaves the array safe) and reports its
closing line. :func:`with_address` returns the client-side config that points at it. The acceptance suite
(``hil/conftest.py``: rigs whose address is ``"emulate"``), the benchmarks and the HIL tests use it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from crossbar_ctl.config import RunConfig, config_from_dict, config_to_dict, dump_toml
from crossbar_ctl.errors import BackendError

#: The ``[backend].address`` that asks for an emulated tester instead of a real one.
EMULATE = "emulate"
TRANSPORT_OF_KIND = {"visa": "tcp", "serial": "pty", "smu-matrix": "tcp"}


@dataclass
class EmulatedTester:
    """A running ``crossbar-ctl emulate`` child: its address, process, and (after exit) its stderr."""

    address: str
    transport: str
    proc: subprocess.Popen
    stderr: str = field(default="")

    def ask(self, line: str, timeout_s: float = 10.0) -> str:
        """One query on a fresh connection, as a second client would ask (TCP only; the tester serves one
        client at a time, so call it when no backend is connected)."""
        if self.transport != "tcp":
            raise ValueError("ask() needs the TCP transport")
        _, host, port, _ = self.address.split("::")
        with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
            s.sendall(line.encode("ascii") + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("the emulator closed the connection")
                buf += chunk
        return buf[:-1].decode("ascii")


def child_env() -> dict[str, str]:
    """The environment for a child Python that must import what this one imports (editable installs)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


@contextmanager
def emulated_tester(config: RunConfig, transport: str = "tcp", startup_timeout_s: float = 60.0
                    ) -> Iterator[EmulatedTester]:
    """Run the emulated tester for ``config`` (seed, array, device, limits: the device under test is the
    simulator built from it) in a child process until the ``with`` block ends."""
    if transport not in ("tcp", "pty"):
        raise ValueError(f"transport must be tcp or pty, got {transport!r}")
    rig = "smu-matrix" if config.backend.kind == "smu-matrix" else "tester"
    data = config_to_dict(config)
    data["backend"] = {**data.get("backend", {}), "kind": "sim", "address": ""}
    with tempfile.TemporaryDirectory(prefix="crossbar-emulate-") as tmp:
        path = Path(tmp) / "tester.toml"
        path.write_text(dump_toml(config_from_dict(data)))
        args = [sys.executable, "-m", "crossbar_ctl.cli", "emulate", "--config", str(path), "--transport", transport,
                "--rig", rig]
        if transport == "tcp":
            args += ["--host", "127.0.0.1", "--port", "0"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        emu = EmulatedTester("", transport, proc)
        try:
            assert proc.stdout is not None
            emu.address = _read_address(proc, startup_timeout_s)
            yield emu
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                _, emu.stderr = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, emu.stderr = proc.communicate()


def _read_address(proc: subprocess.Popen, timeout_s: float) -> str:
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline().strip() if ready else ""
    if not line:
        proc.kill()
        err = proc.communicate()[1]
        raise BackendError(f"crossbar-ctl emulate did not start within {timeout_s:g} s: {err.strip()[-500:]}")
    return line


def with_address(config: RunConfig, kind: str, address: str) -> RunConfig:
    """``config`` with ``[backend].kind`` and ``address`` replaced (the client side of an emulated rig)."""
    data = config_to_dict(config)
    if kind == "smu-matrix":  # "<SMU resource> <matrix resource>"
        address, matrix = address.split()
        data["smu_matrix"] = {**data.get("smu_matrix", {}), "matrix_address": matrix}
    data["backend"] = {**data.get("backend", {}), "kind": kind, "address": address}
    return config_from_dict(data)
