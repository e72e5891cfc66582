"""crossbar_sim: the Numba device-physics simulator backend of crossbar_ctl (entry point ``sim``).

Modules: :mod:`~crossbar_sim.device_arrays` (per-device parameters from a device config and the seed),
:mod:`~crossbar_sim.kernels` (Numba pulse and read kernels), :mod:`~crossbar_sim.readout` (DAC/ADC, read noise),
:mod:`~crossbar_sim.backend` (:class:`SimBackend`), :mod:`~crossbar_sim.bench` (``bench_sim``).
"""
from __future__ import annotations

from crossbar_sim.backend import SimBackend

__all__ = ["SimBackend"]
