"""The sweep file: a base run config, axes to vary, include/exclude rules and seeds; expanded into points.

A sweep file (TOML)::

    name = "tiny"                  # optional label
    base_file = "run.toml"         # optional run file, relative to this sweep file
    seeds = [0, 1]                 # repeats: a list, or {start = 0, stop = 3} (stop exclusive)
    float_ceiling = 0.937          # optional: float-network test accuracy, drawn as a line by `report`

    [base]                         # optional inline run config (merged over base_file), dotted keys allowed
    training.epochs = 1

    [axes]                         # the grid: every combination of these values
    "training.method" = ["streaming-pca", "nmf"]
    "training.rank" = {start = 1, stop = 4}          # 1, 2, 3 (stop exclusive, step defaults to 1)

    [[exclude]]                    # drop grid points matching every key given (a list matches any of its values)
    "training.method" = "nmf"
    "training.rank" = [3]

    [[include]]                    # extra points (overrides over the base), e.g. a method without rank/mode
    "training.method" = "mbgd"

Every point is repeated for every seed. Points are deduplicated by their overrides. Run-directory names are
built from the overrides (``method-nmf_rank-2_seed-0``), so they are deterministic.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crossbar_ctl.config import RunConfig, config_from_dict, read_toml
from crossbar_ctl.errors import ConfigError

Scalar = int | float | str | bool
Value = Scalar | list[Any]


class RangeSpec(BaseModel):
    """``{start, stop, step}``: values start, start+step, ... while < stop (as Python's range; floats allowed)."""

    model_config = ConfigDict(extra="forbid")
    start: int | float
    stop: int | float
    step: int | float = 1

    def values(self) -> list[int | float]:
        if self.step <= 0:
            raise ValueError(f"step must be positive, got {self.step}")
        out: list[int | float] = []
        i = 0
        while (v := self.start + i * self.step) < self.stop - 1e-12 * abs(self.step):
            out.append(round(v, 12) if isinstance(v, float) else v)
            i += 1
        if not out:
            raise ValueError(f"range {self.start}..{self.stop} (step {self.step}) is empty")
        return out


class SweepSpec(BaseModel):
    """A validated sweep file. ``source`` is the file it came from (for messages and relative paths)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("", description="label of the sweep")
    base_file: str | None = Field(None, description="run config file, relative to the sweep file")
    base: dict[str, Any] = Field(default_factory=dict, description="inline run config merged over base_file")
    axes: dict[str, list[Any] | RangeSpec] = Field(default_factory=dict, description="key.path -> values")
    exclude: list[dict[str, Any]] = Field(default_factory=list, description="grid points to drop")
    include: list[dict[str, Any]] = Field(default_factory=list, description="extra points (overrides)")
    seeds: list[int] | RangeSpec = Field([0], description="repeats: the run seed of each repeat")
    float_ceiling: float | None = Field(None, gt=0, le=1, description="float-network test accuracy (fraction)")
    source: str = Field("<sweep>", exclude=True)

    @field_validator("axes", mode="before")
    @classmethod
    def _flatten_axes(cls, value: Any) -> Any:
        return _flatten(value) if isinstance(value, dict) else value

    @field_validator("exclude", "include", mode="before")
    @classmethod
    def _flatten_rules(cls, value: Any) -> Any:
        return [_flatten(v) if isinstance(v, dict) else v for v in value] if isinstance(value, list) else value

    @field_validator("axes")
    @classmethod
    def _check_axes(cls, axes: dict[str, Any]) -> dict[str, Any]:
        for key, values in axes.items():
            _check_key(key)
            if isinstance(values, list) and not values:
                raise ValueError(f"axis {key!r} has no values")
        return axes

    @field_validator("include")
    @classmethod
    def _check_include(cls, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for rule in rules:
            for key in rule:
                _check_key(key)
        return rules

    def seed_list(self) -> list[int]:
        seeds = self.seeds.values() if isinstance(self.seeds, RangeSpec) else self.seeds
        if not seeds or any(not isinstance(s, int) or s < 0 for s in seeds):
            raise ConfigError(f"{self.source}: seeds: expected non-negative integers, got {seeds!r}")
        return [int(s) for s in seeds]

    def axis_values(self) -> dict[str, list[Any]]:
        return {k: (v.values() if isinstance(v, RangeSpec) else list(v)) for k, v in self.axes.items()}

    def base_data(self) -> dict[str, Any]:
        """The run-config dict every point starts from: base_file, then [base] merged over it."""
        data: dict[str, Any] = {}
        if self.base_file:
            path = Path(self.source).parent / self.base_file
            if not path.is_file():
                raise ConfigError(f"{self.source}: base_file: no such run file {str(path)!r}")
            data = read_toml(path, "run file")
        _merge(data, copy.deepcopy(self.base))
        return data


_RUN_KEYS = set(RunConfig.model_fields)


def _check_key(key: str) -> None:
    head = key.split(".", 1)[0]
    if key == "seed":
        raise ValueError("'seed' is not an axis: give the repeats as the top-level `seeds`")
    if head not in _RUN_KEYS or "." not in key:
        raise ValueError(f"{key!r} is not a run-config key path (section.key, sections: {sorted(_RUN_KEYS - {'seed'})})")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"training": {"rank": [1]}} -> {"training.rank": [1]}; a {start, stop[, step]} table is a leaf (a range)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not {"start", "stop"} <= set(v):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def set_path(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"``, creating tables on the way."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section")
    node[parts[-1]] = copy.deepcopy(value)


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; every error names the file and the key."""
    p = Path(path)
    source = str(p)
    data = read_toml(p, "sweep file")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        lines = [f"{source}: invalid sweep file ({err.error_count()} error(s))"]
        for e in err.errors():
            loc = ".".join(str(x) for x in e["loc"] if not str(x).startswith(("list[", "function-")))
            msg = "unknown key (not allowed here)" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"  {loc or '(top level)'}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    spec.source = source
    return spec


@dataclass
class Point:
    """One run of the sweep: its overrides (without the seed), seed, run-directory name and resolved config."""

    name: str
    group: str
    seed: int
    overrides: dict[str, Any]
    data: dict[str, Any] = field(repr=False)
    config: RunConfig = field(repr=False)

    def manifest(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "seed": self.seed, "overrides": self.overrides}


def _matches(point: dict[str, Any], rule: dict[str, Any]) -> bool:
    for key, want in rule.items():
        options = want if isinstance(want, list) else [want]
        if key not in point or point[key] not in options:
            return False
    return True


def _label(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ""))
    text = text.strip("[]").replace(",", "x") if isinstance(value, list) else text
    return re.sub(r"[^A-Za-z0-9.+-]", "", text.replace(" ", "")) or "none"


def group_name(overrides: dict[str, Any]) -> str:
    """Deterministic run-directory stem from the overrides (the key's last part, then the value)."""
    if not overrides:
        return "base"
    lasts = [k.rsplit(".", 1)[-1] for k in overrides]
    parts = []
    for key, last in zip(overrides, lasts):
        label = last if lasts.count(last) == 1 else key
        parts.append(f"{label}-{_label(overrides[key])}")
    name = "_".join(parts)
    if len(name) > 100:
        digest = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
        name = f"{name[:90]}-{digest}"
    return name


def expand_points(spec: SweepSpec) -> list[Point]:
    """The grid (minus excludes, plus includes) × seeds, deduplicated, each with its validated config.

    Raises :class:`ConfigError` naming the sweep file, the point and the key when a point's config is invalid."""
    axes = spec.axis_values()
    for i, rule in enumerate(spec.exclude):
        for key in rule:
            if key not in axes:
                raise ConfigError(f"{spec.source}: exclude[{i}].{key}: not an axis of this sweep ({sorted(axes)})")
    combos: list[dict[str, Any]] = []
    if axes:
        for values in product(*axes.values()):
            combo = dict(zip(axes, values))
            if not any(_matches(combo, rule) for rule in spec.exclude):
                combos.append(combo)
    combos.extend(dict(rule) for rule in spec.include)
    if not combos:
        combos = [{}]
    seen: set[str] = set()
    unique = []
    for combo in combos:
        token = json.dumps(combo, sort_keys=True)
        if token not in seen:
            seen.add(token)
            unique.append(combo)
    base = spec.base_data()
    points: list[Point] = []
    names: dict[str, str] = {}
    for combo in unique:
        group = group_name(combo)
        token = json.dumps(combo, sort_keys=True)
        if names.get(group, token) != token:  # two different override sets with the same label
            group = f"{group}-{hashlib.sha1(token.encode()).hexdigest()[:8]}"
        names[group] = token
        for seed in spec.seed_list():
            data = copy.deepcopy(base)
            for key, value in combo.items():
                set_path(data, key, value)
            data["seed"] = seed
            set_path(data, "logging.progress", False)
            name = f"{group}_seed-{seed}"
            cfg = config_from_dict(data, source=f"{spec.source} (point {name})")
            points.append(Point(name, group, seed, combo, data, cfg))
    return points
