"""Choosing cells (a small spec language) and reading/pulsing a set of cells through Backend operations.

Cell spec: comma-separated ``TILE:ROWS:COLS`` items; each part is ``*`` (all), ``i`` or ``a-b`` (inclusive).
``0:0:0-7`` is the first 8 devices of row 0 of tile 0; ``0:*:*`` every device of tile 0; ``1:2:3,1:4:5`` two.

:class:`CellAccess` reads and pulses a fixed list of cells in one of two modes:

* ``"cell"``: one device per operation, ``read_cell(t, r, c, V)`` (G = I/V) and ``pulse_cell``: how a
  source-measure unit probes one device at a time.
* ``"parallel"``: one operation per tile, ``read_conductance(tile)`` (at ``[read].v_read_V``) and ``program``
  with a signed pulse count per device (zero for devices not in the list): how an array tester does it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from crossbar_ctl.errors import ConfigError
from crossbar_protocols.base import Mode, normalize_cells

if TYPE_CHECKING:  # pragma: no cover
    from crossbar_ctl.backend import Backend


def _part(text: str, size: int, what: str) -> list[int]:
    text = text.strip()
    if text == "*":
        return list(range(size))
    try:
        if "-" in text:
            a, b = (int(x) for x in text.split("-", 1))
            if b < a:
                raise ValueError
            return list(range(a, b + 1))
        return [int(text)]
    except ValueError:
        raise ValueError(f"cell spec: {what} {text!r} is not '*', 'i' or 'a-b'") from None


def parse_cells(spec: str, tile_shapes: Sequence[tuple[int, int]]) -> np.ndarray:
    """Cells named by ``spec`` (see the module doc) as an (n, 3) array, checked against ``tile_shapes``."""
    out: list[tuple[int, int, int]] = []
    for item in spec.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3:
            raise ValueError(f"cell spec item {item!r}: expected TILE:ROWS:COLS, e.g. 0:0:0-7")
        for t in _part(parts[0], len(tile_shapes), "tile"):
            if not 0 <= t < len(tile_shapes):
                raise IndexError(f"cell spec {item!r}: tile {t} not in [0, {len(tile_shapes) - 1}]")
            rows, cols = tile_shapes[t]
            for r in _part(parts[1], rows, "rows"):
                for c in _part(parts[2], cols, "cols"):
                    out.append((t, r, c))
    seen: set[tuple[int, int, int]] = set()
    unique = [c for c in out if not (c in seen or seen.add(c))]
    return normalize_cells(unique, tile_shapes)


def check_half_select(device: Any, cells: np.ndarray, amplitudes_V: list[float]) -> None:
    """Refuse pulses whose half-select bias |V|/2 exceeds the switching threshold ([device].v_threshold_V) when
    two chosen cells share a row or a column: pulsing one would switch the other (V/2 scheme), so neither would
    measure what the protocol claims. Cells on distinct rows and columns, or lower amplitudes, are fine.
    ``device`` is the run's ``[device]`` section (only ``v_threshold_V`` is used): no backend is needed, so a dry
    run applies the same check."""
    if not amplitudes_V:
        return
    v = max(abs(a) for a in amplitudes_V)
    v_th = float(device.v_threshold_V)
    if v / 2 <= v_th:
        return
    for t in np.unique(cells[:, 0]).tolist():
        sel = cells[cells[:, 0] == t]
        for axis, what in ((1, "row"), (2, "column")):
            vals, counts = np.unique(sel[:, axis], return_counts=True)
            if np.any(counts > 1):
                raise ConfigError(
                    f"pulses of {v:g} V half-select other devices at {v / 2:g} V, above the switching threshold "
                    f"{v_th:g} V ([device].v_threshold_V), and the chosen cells share tile {t} {what} "
                    f"{int(vals[counts > 1][0])}: choose cells on distinct rows and columns or lower the amplitude")


def check_read_mode(config_v_read_V: float, mode: Mode, v_read_V: float | None) -> float:
    """The read voltage (V) cells are read at: ``v_read_V``, or ``[read].v_read_V`` (``config_v_read_V``) when
    None. Mode "parallel" reads with read_conductance at the rig's read voltage only, so another ``v_read_V``
    is refused (ValueError)."""
    if mode == "parallel" and v_read_V is not None and float(v_read_V) != config_v_read_V:
        raise ValueError(f'mode "parallel" reads with read_conductance at [read].v_read_V = {config_v_read_V:g} V; '
                         f"v_read_V = {v_read_V:g} V needs mode \"cell\" (or set read.v_read_V)")
    return float(config_v_read_V if v_read_V is None else v_read_V)


def read_ops(cells: np.ndarray, mode: Mode) -> dict[str, int]:
    """Operations of one read of every cell."""
    if mode == "cell":
        return {"read_cell": len(cells)}
    return {"read_conductance": len(np.unique(cells[:, 0]))}


def pulse_ops(cells: np.ndarray, mode: Mode, active: int | None = None) -> dict[str, int]:
    """Operations of one pulse step of ``active`` cells (default all)."""
    n = len(cells) if active is None else int(active)
    if mode == "cell":
        return {"pulse_cell": n}
    return {"program": len(np.unique(cells[:, 0])) if n else 0}


class CellAccess:
    """Read and pulse a fixed list of cells (see the module doc for the two modes)."""

    def __init__(self, backend: "Backend", cells: np.ndarray, mode: Mode = "cell",
                 v_read_V: float | None = None) -> None:
        self.backend = backend
        self.cells = np.asarray(cells, dtype=np.int64)
        self.mode = mode
        self.v_read_V = check_read_mode(backend.config.read.v_read_V, mode, v_read_V)
        self.tiles = [int(t) for t in np.unique(self.cells[:, 0])]
        self._sel = {t: np.nonzero(self.cells[:, 0] == t)[0] for t in self.tiles}

    def __len__(self) -> int:
        return len(self.cells)

    def read(self, which: np.ndarray | None = None) -> np.ndarray:
        """Conductance (S) of every cell (or of the cells with indices ``which``; others are NaN)."""
        out = np.full(len(self.cells), np.nan)
        idx = np.arange(len(self.cells)) if which is None else np.asarray(which, dtype=np.int64)
        if self.mode == "cell":
            v = self.v_read_V
            for k in idx.tolist():
                t, r, c = self.cells[k].tolist()
                out[k] = self.backend.read_cell(t, r, c, v) / v
            return out
        mask = np.zeros(len(self.cells), dtype=bool)
        mask[idx] = True
        for t in self.tiles:
            sel = self._sel[t][mask[self._sel[t]]]
            if sel.size:
                g = self.backend.read_conductance(t)
                out[sel] = g[self.cells[sel, 1], self.cells[sel, 2]]
        return out

    def pulse(self, counts: np.ndarray | int, v_set_V: float | None = None, v_reset_V: float | None = None,
              width_s: float | None = None) -> int:
        """Send ``counts[k]`` pulses to cell k (> 0 at ``v_set_V``, < 0 at ``v_reset_V``; an int applies to all).
        Returns the number of device pulses sent."""
        pulse = self.backend.config.pulse
        vs = pulse.v_set_V if v_set_V is None else float(v_set_V)
        vr = pulse.v_reset_V if v_reset_V is None else float(v_reset_V)
        w = pulse.width_s if width_s is None else float(width_s)
        n = np.broadcast_to(np.asarray(counts, dtype=np.int64), (len(self.cells),))
        if self.mode == "cell":
            for k in np.nonzero(n)[0].tolist():
                t, r, c = self.cells[k].tolist()
                self.backend.pulse_cell(t, r, c, vs if n[k] > 0 else vr, w, int(abs(n[k])))
        else:
            for t in self.tiles:
                sel = self._sel[t]
                if not np.any(n[sel]):
                    continue
                m = np.zeros(self.backend.shape(t), dtype=np.int32)
                m[self.cells[sel, 1], self.cells[sel, 2]] = n[sel]
                self.backend.program(t, m, v_set_V=vs, v_reset_V=vr, width_s=w)
        return int(np.abs(n).sum())
