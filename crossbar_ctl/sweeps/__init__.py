"""Experiment sweeps: a TOML sweep file expands into ordinary training runs, executed on Dask.

``spec`` reads and expands the sweep file, ``runner`` runs the points on a (local or remote) Dask cluster,
``report`` aggregates the run directories into ``summary.csv`` and figures, ``cli`` adds the
``crossbar-ctl sweep`` and ``crossbar-ctl report`` subcommands.
"""
from crossbar_ctl.sweeps.spec import Point, SweepSpec, expand_points, load_sweep

__all__ = ["Point", "SweepSpec", "expand_points", "load_sweep"]
