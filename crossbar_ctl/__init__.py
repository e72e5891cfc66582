"""crossbar_ctl: train neural networks on memristor crossbar arrays, simulated or real."""
from __future__ import annotations

from crossbar_ctl.backend import Backend, Capabilities, available_backends, connect
from crossbar_ctl.config import RunConfig, load_config
from crossbar_ctl.errors import BackendError, ConfigError, CrossbarError, LimitError

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "Capabilities",
    "ConfigError",
    "CrossbarError",
    "LimitError",
    "RunConfig",
    "available_backends",
    "connect",
    "load_config",
    "__version__",
]
