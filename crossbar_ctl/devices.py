"""Device models: typed configs with the equations that define them, and the named presets.

Every analytic model in this file moves a device's conductance G (siemens) by an *affine pulse map* (the
``tabular`` model of measured ΔG statistics is the exception: see :class:`TabularDevice`): one effective
pulse applies ``G <- G + r·(G* − G)`` in the saturating models (rate r, target G* per polarity), or
``G <- G + ΔG`` in the linear ones. ``n`` pulses therefore have the closed form

    G_n = G* − (G* − G_0)·exp(−n·ρ)      with ρ = −ln(1 − r)       (saturating)
    G_n = G_0 + n·ΔG                                                 (linear)

valid for fractional n too (used by the effective-pulse rule). The state the simulator keeps per device is
G itself: because each curve is self-similar, advancing by n pulses from any G never needs the inversion
P(G) of the curve. The result is clipped to the device's [Gmin, Gmax].

Effective-pulse rule (all models). A pulse of amplitude V (volts) and width t (seconds) counts as

    n_eff = 0                                          if |V| <= V_th
    n_eff = (|V| − V_th)/(V_ref − V_th) · t/t_ref      otherwise

nominal pulses; V > 0 potentiates (G up), V < 0 depresses. Cycle-to-cycle noise is added once per write of
n pulses to one device: ΔG_noise ~ N(0, σ_c2c·(Gmax − Gmin)·√n_eff), then G is clipped to [Gmin, Gmax].

Device-to-device spread (drawn once per device from the run seed): Gmin·(1 + σ_gmin·z), Gmax·(1 + σ_gmax·z'),
and the curve shape (A, or the step size) scaled by (1 + σ_shape·z''); z ~ N(0, 1). Stuck devices never move:
a fraction is stuck at Gmin, another at Gmax.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator


RHO_MAX = 40.0  # a per-pulse rate r >= 1 (possible only with a large shape spread) jumps to the target

PulseMap = tuple[Any, Any, bool]  # (a, rho, linear); see _DeviceBase.pulse_maps


def rate_to_rho(r: Any) -> np.ndarray:
    """ρ = −ln(1 − r) for a fraction r of the distance to the target per pulse, capped at :data:`RHO_MAX`."""
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = -np.log1p(-np.minimum(r, 1.0))
    return np.minimum(np.where(r < 1.0, rho, RHO_MAX), RHO_MAX)


class _DeviceBase(BaseModel):
    """Parameters shared by every model (SI units)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None = Field(None, description="name of the preset these parameters came from")
    g_min_S: float = Field(3.0769e-9, gt=0, description="lowest conductance Gmin (S)")
    g_max_S: float = Field(38.462e-9, gt=0, description="highest conductance Gmax (S)")
    sigma_c2c: float = Field(0.0, ge=0, le=1, description="cycle-to-cycle noise, fraction of Gmax-Gmin per sqrt(pulse)")
    sigma_d2d_g_min: float = Field(0.0, ge=0, le=0.5, description="device-to-device relative spread of Gmin")
    sigma_d2d_g_max: float = Field(0.0, ge=0, le=0.5, description="device-to-device relative spread of Gmax")
    sigma_d2d_shape: float = Field(0.0, ge=0, le=0.5, description="device-to-device relative spread of A / step")
    stuck_at_min_fraction: float = Field(0.0, ge=0, le=1, description="fraction of devices stuck at Gmin")
    stuck_at_max_fraction: float = Field(0.0, ge=0, le=1, description="fraction of devices stuck at Gmax")
    v_threshold_V: float = Field(1.2, ge=0, description="switching threshold |V|: pulses at or below do nothing")
    v_ref_V: float = Field(2.0, gt=0, description="amplitude at which one pulse of width_ref_s is one nominal pulse")
    width_ref_s: float = Field(1e-6, gt=0, description="pulse width of one nominal pulse (s)")
    half_select_disturb: float = Field(
        0.0, ge=0, le=1, description="probability that a half-selected device (V/2) takes one pulse per slot"
    )

    @model_validator(mode="after")
    def _check_common(self) -> "_DeviceBase":
        if self.g_max_S <= self.g_min_S:
            raise ValueError(f"g_max_S ({self.g_max_S:g}) must be greater than g_min_S ({self.g_min_S:g})")
        if self.v_ref_V <= self.v_threshold_V:
            raise ValueError(f"v_ref_V ({self.v_ref_V:g}) must be above v_threshold_V ({self.v_threshold_V:g})")
        if self.stuck_at_min_fraction + self.stuck_at_max_fraction > 1:
            raise ValueError("stuck_at_min_fraction + stuck_at_max_fraction must not exceed 1")
        return self

    @property
    def g_range_S(self) -> float:
        return self.g_max_S - self.g_min_S

    def mean_step_S(self) -> float:
        """Mean |ΔG| of one nominal pulse over the window (used to turn weight updates into pulse counts)."""
        up, down = self.levels_up_down()
        return 0.5 * self.g_range_S * (1.0 / up + 1.0 / down)

    def levels_up_down(self) -> tuple[float, float]:
        """Number of nominal pulses that sweep the full window up and down."""
        raise NotImplementedError

    def pulse_maps(self, g_min_S: Any, g_max_S: Any, shape: Any = 1.0) -> tuple[PulseMap, PulseMap]:
        """The affine pulse map per polarity (up, down) of devices with windows [g_min_S, g_max_S] and curve-shape
        factor ``shape`` (the d2d spread of A or of the step; scalars or broadcasting arrays), as
        ``(a, rho, linear)``: saturating, one pulse gives G_n = a − (a − G)·e^(−n·ρ) with target a (S) and rate ρ
        per nominal pulse; linear (``linear`` True), a is the signed ΔG per pulse and ρ is 0."""
        raise NotImplementedError

    def nominal_maps(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The nominal (spread-free) map per polarity as ``(target_S, rate)``: one pulse moves G by
        rate·(target − G), rate = 1 − e^(−ρ); a linear polarity is ``(±ΔG, 0.0)``."""
        up, down = ((float(a), 0.0) if linear else (float(a), float(-np.expm1(-rho)))
                    for a, rho, linear in self.pulse_maps(self.g_min_S, self.g_max_S, 1.0))
        return up, down

    def step_S(self, g_S: float) -> tuple[float, float]:
        """|ΔG| of one nominal pulse up and down at conductance ``g_S``."""
        out = []
        for target, rate in self.nominal_maps():
            out.append(abs(target) if rate == 0.0 else abs(rate * (target - g_S)))
        return out[0], out[1]

    def pulses_between(self, g_from_S: np.ndarray | float, g_to_S: np.ndarray | float) -> np.ndarray:
        """Nominal pulses (signed, fractional) that take a device from ``g_from_S`` to ``g_to_S``:
        n = ln((G* − G_from)/(G* − G_to)) / (−ln(1 − rate)) on a saturating map, (G_to − G_from)/ΔG on a linear one.
        Targets beyond a map's reach give the pulses to its bound (for planning writes on the host)."""
        g0 = np.asarray(g_from_S, dtype=np.float64)
        g1 = np.clip(np.asarray(g_to_S, dtype=np.float64), self.g_min_S, self.g_max_S)
        out = np.zeros(np.broadcast(g0, g1).shape)
        for sign, (target, rate) in zip((1.0, -1.0), self.nominal_maps()):
            sel = (g1 > g0) if sign > 0 else (g1 < g0)
            if rate == 0.0:
                out = np.where(sel, (g1 - g0) / abs(target), out)
                continue
            rho = -math.log(1.0 - rate)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = (target - g0) / (target - g1)
                n = np.log(np.where(ratio > 0, ratio, 1.0)) / rho
            out = np.where(sel, sign * np.abs(n), out)
        return out

    def symmetry_point_S(self) -> float:
        """The conductance where one up pulse and one down pulse are equal in size (the window's middle when
        they are equal everywhere or nowhere). Random up/down pulses drift a device towards this point."""
        lo, hi = self.g_min_S, self.g_max_S
        f = lambda g: self.step_S(g)[0] - self.step_S(g)[1]  # noqa: E731  (up shrinks, down grows with g)
        f_lo, f_hi = f(lo), f(hi)
        if f_lo == f_hi or f_lo * f_hi > 0:
            return 0.5 * (lo + hi)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if (f(mid) > 0) == (f_lo > 0):
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)


class IdealDevice(_DeviceBase):
    """Linear, symmetric, noise-free: ΔG = ±(Gmax − Gmin)/levels per pulse (the software reference)."""

    model: Literal["ideal"] = Field("ideal", description="device model")
    levels: int = Field(1000, ge=2, description="pulses from Gmin to Gmax")

    def levels_up_down(self) -> tuple[float, float]:
        return float(self.levels), float(self.levels)

    def pulse_maps(self, g_min_S: Any, g_max_S: Any, shape: Any = 1.0) -> tuple[PulseMap, PulseMap]:
        step = shape * (g_max_S - g_min_S) / self.levels
        return (step, 0.0, True), (-step, 0.0, True)


class NeuroSimExpDevice(_DeviceBase):
    """NeuroSim's exponential potentiation/depression curves.

    G_LTP(P) = B_p(1 − e^(−P/A_p)) + Gmin,       B_p = (Gmax − Gmin)/(1 − e^(−Pmax_p/A_p))
    G_LTD(P) = −B_d(1 − e^((P − Pmax_d)/A_d)) + Gmax,  B_d = (Gmax − Gmin)/(1 − e^(−Pmax_d/A_d))
    Potentiation from Gmin reaches Gmax after Pmax_p pulses; depression from Gmax reaches Gmin after Pmax_d.
    In closed form: potentiation targets G* = Gmin + B_p with ρ = 1/A_p; depression targets Gmax − B_d, ρ = 1/A_d.
    """

    model: Literal["neurosim-exp"] = Field("neurosim-exp", description="device model")
    pmax_ltp: float = Field(97, gt=0, description="potentiation pulses from Gmin to Gmax (levels)")
    pmax_ltd: float = Field(100, gt=0, description="depression pulses from Gmax to Gmin (levels)")
    a_ltp: float = Field(48.42056, gt=0, description="potentiation nonlinearity A_p (pulses)")
    a_ltd: float = Field(20.0303, gt=0, description="depression nonlinearity A_d (pulses)")

    def levels_up_down(self) -> tuple[float, float]:
        return float(self.pmax_ltp), float(self.pmax_ltd)

    def pulse_maps(self, g_min_S: Any, g_max_S: Any, shape: Any = 1.0) -> tuple[PulseMap, PulseMap]:
        a_p, a_d = shape * self.a_ltp, shape * self.a_ltd
        b_p = (g_max_S - g_min_S) / -np.expm1(-self.pmax_ltp / a_p)
        b_d = (g_max_S - g_min_S) / -np.expm1(-self.pmax_ltd / a_d)
        return (g_min_S + b_p, 1.0 / a_p, False), (g_max_S - b_d, 1.0 / a_d, False)


class SoftBoundsDevice(_DeviceBase):
    """Soft bounds (aihwkit-style): the step shrinks linearly towards the bound it approaches.

    ΔG_up = dG·(1 + up_down)·(Gmax − G)/(Gmax − Gmin),   ΔG_down = dG·(1 − up_down)·(G − Gmin)/(Gmax − Gmin)
    with dG = (Gmax − Gmin)/levels, so r_up = (1 + up_down)/levels, target Gmax (and r_down, target Gmin).
    """

    model: Literal["soft-bounds"] = Field("soft-bounds", description="device model")
    levels: float = Field(100, ge=2, description="(Gmax − Gmin)/dG: the step at the far bound is dG")
    up_down: float = Field(0.0, gt=-1, lt=1, description="asymmetry: up steps ×(1+up_down), down ×(1−up_down)")

    def levels_up_down(self) -> tuple[float, float]:
        return self.levels / (1 + self.up_down), self.levels / (1 - self.up_down)

    def pulse_maps(self, g_min_S: Any, g_max_S: Any, shape: Any = 1.0) -> tuple[PulseMap, PulseMap]:
        return ((g_max_S, rate_to_rho(shape * (1.0 + self.up_down) / self.levels), False),
                (g_min_S, rate_to_rho(shape * (1.0 - self.up_down) / self.levels), False))


class LinearStepDevice(_DeviceBase):
    """Linear step (aihwkit-style) with a state-dependent slope.

    ΔG_up = dG_up·(1 − γ_up·x),  ΔG_down = dG_down·(1 − γ_down·(1 − x)),  x = (G − Gmin)/(Gmax − Gmin),
    dG_up = dG·(1 + up_down), dG_down = dG·(1 − up_down), dG = (Gmax − Gmin)/levels. γ = 0 is a pure linear step.
    """

    model: Literal["linear-step"] = Field("linear-step", description="device model")
    levels: float = Field(100, ge=2, description="(Gmax − Gmin)/dG")
    up_down: float = Field(0.0, gt=-1, lt=1, description="asymmetry of up and down steps")
    gamma_up: float = Field(0.0, ge=0, lt=1, description="slope of the up step with state (0 = linear)")
    gamma_down: float = Field(0.0, ge=0, lt=1, description="slope of the down step with state (0 = linear)")

    def levels_up_down(self) -> tuple[float, float]:
        return self.levels / (1 + self.up_down), self.levels / (1 - self.up_down)

    def pulse_maps(self, g_min_S: Any, g_max_S: Any, shape: Any = 1.0) -> tuple[PulseMap, PulseMap]:
        r = g_max_S - g_min_S
        d_up = shape * r * (1.0 + self.up_down) / self.levels
        d_dn = shape * r * (1.0 - self.up_down) / self.levels
        if self.gamma_up == 0.0:
            up: PulseMap = (d_up, 0.0, True)
        else:
            up = (g_min_S + r / self.gamma_up, rate_to_rho(d_up * self.gamma_up / r), False)
        if self.gamma_down == 0.0:
            down: PulseMap = (-d_dn, 0.0, True)
        else:
            down = (g_max_S - r / self.gamma_down, rate_to_rho(d_dn * self.gamma_down / r), False)
        return up, down


class TabularDevice(_DeviceBase):
    """Measured ΔG statistics conditioned on G, per polarity (for devices no analytic model fits).

    One nominal pulse of polarity s ∈ {up, down} at conductance G:

        G ← clip(G + μ_s(G) + σ_s(G)·ξ, Gmin, Gmax),   ξ ~ N(0, 1)

    with μ_s, σ_s linearly interpolated on ``g_grid_S`` (held constant beyond its ends); μ_up ≥ 0, μ_down ≤ 0.
    n pulses iterate the map (no closed form): the simulator rounds a write's n_eff nominal pulses to an integer
    count stochastically and applies them one at a time (:mod:`crossbar_sim.tabular`). The table carries the
    cycle-to-cycle noise: the simulator adds none, and ``sigma_c2c`` is not a parameter but the noise figure that
    host-side planning reads (the controller's write-verify threshold), derived as
    σ_c2c = √(mean over the grid of (σ_up² + σ_down²)/2) / (Gmax − Gmin); a config may give it only as 0 (derive)
    or as that value (what a dumped config holds). Device-to-device spread: a device with window [Gmin', Gmax']
    and shape factor f follows the table in window units, G ← G + k·(f·μ_s(u) + σ_s(u)·ξ) with
    k = (Gmax' − Gmin')/(Gmax − Gmin) and u = Gmin + (G − Gmin')/k (f scales the mean step only).

    Planning (host side): n pulses from G_a to G_b = ∫ dG/|μ̃_s(G)|, μ̃_s the linear interpolant of |μ_s| on the
    knots {Gmin, grid, Gmax}, floored at 10⁻³·max|μ_s| (a table that never moves would need infinitely many
    pulses); exact per segment: Δn = ΔG·ln(m₁/m₀)/(m₁ − m₀). It is the continuous limit of the pulse map (for a
    saturating device r(G* − G) it counts 1/r per e-fold where the map takes 1/(−ln(1 − r)))."""

    model: Literal["tabular"] = Field("tabular", description="device model")
    g_grid_S: list[float] = Field(..., min_length=1, description="bin centres G (S), strictly increasing")
    dg_up_mean_S: list[float] = Field(..., description="mean ΔG of one potentiating pulse at each grid G (S, >= 0)")
    dg_up_std_S: list[float] = Field(..., description="std of ΔG of one potentiating pulse (S)")
    dg_down_mean_S: list[float] = Field(..., description="mean ΔG of one depressing pulse (S, <= 0)")
    dg_down_std_S: list[float] = Field(..., description="std of ΔG of one depressing pulse (S)")
    _knots: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _check_table(self) -> "TabularDevice":
        grid = np.asarray(self.g_grid_S, dtype=np.float64)
        if not np.all(np.isfinite(grid)):
            raise ValueError("g_grid_S must be finite")
        if np.any(np.diff(grid) <= 0):
            k = int(np.nonzero(np.diff(grid) <= 0)[0][0]) + 1
            raise ValueError(f"g_grid_S must be strictly increasing: g_grid_S[{k}] = {grid[k]:g} <= "
                             f"g_grid_S[{k - 1}] = {grid[k - 1]:g}")
        if grid[0] < self.g_min_S or grid[-1] > self.g_max_S:
            raise ValueError(f"g_grid_S must lie within [g_min_S, g_max_S] = [{self.g_min_S:g}, {self.g_max_S:g}]")
        for key, sign in (("dg_up_mean_S", 1), ("dg_up_std_S", 0), ("dg_down_mean_S", -1), ("dg_down_std_S", 0)):
            v = np.asarray(getattr(self, key), dtype=np.float64)
            if v.size != grid.size:
                raise ValueError(f"{key} has {v.size} entries, g_grid_S has {grid.size}: one per grid point")
            bad = np.nonzero(~np.isfinite(v) | (v * (sign or 1) < 0))[0]
            if bad.size:
                what = {1: ">= 0 (potentiation)", -1: "<= 0 (depression)", 0: ">= 0 (a standard deviation)"}
                raise ValueError(f"{key}[{bad[0]}] = {v[bad[0]]:g}: every {key} entry must be finite and {what[sign]}")
            if sign and not np.any(v != 0):
                raise ValueError(f"{key} is zero everywhere: the device never moves in that direction")
        sd2 = 0.5 * (np.square(self.dg_up_std_S) + np.square(self.dg_down_std_S))
        derived = min(float(np.sqrt(np.mean(sd2))) / self.g_range_S, 1.0)
        if self.sigma_c2c != 0 and not math.isclose(self.sigma_c2c, derived, rel_tol=1e-9, abs_tol=0.0):
            raise ValueError(f"sigma_c2c is derived from the table for model tabular (here {derived:.6g}); the "
                             "simulator adds no noise of its own (dg_up_std_S / dg_down_std_S carry it): leave "
                             "sigma_c2c out or 0")
        object.__setattr__(self, "sigma_c2c", derived)  # frozen model: set once, here
        self._plan()
        return self

    def _plan(self) -> None:
        """Knots of the planning integral: (G, |μ̃_up|, P_up, |μ̃_down|, P_down) at {Gmin, grid, Gmax}."""
        g = np.unique(np.concatenate([[self.g_min_S], self.g_grid_S, [self.g_max_S]]))
        out = [g]
        for mean in (self.dg_up_mean_S, self.dg_down_mean_S):
            m = np.abs(np.interp(g, self.g_grid_S, mean))
            m = np.maximum(m, 1e-3 * m.max())
            out += [m, np.concatenate([[0.0], np.cumsum(self._segment(np.diff(g), m[:-1], m[1:]))])]
        self._knots = tuple(tuple(a.tolist()) for a in out)  # tuples: the model stays comparable with ==

    @staticmethod
    def _segment(dg: np.ndarray, m0: np.ndarray, m1: np.ndarray) -> np.ndarray:
        """∫ dG/μ over a width dg where μ goes linearly from m0 to m1 (> 0): dg·ln(m1/m0)/(m1 − m0)."""
        x = m1 / m0 - 1.0
        small = np.abs(x) < 1e-6
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(small, 1.0 - 0.5 * x + x * x / 3.0, np.log1p(x) / np.where(small, 1.0, x))
        return dg * f / m0

    def _pulses_to(self, g_S: Any, down: bool) -> np.ndarray:
        """P_s(G) = nominal pulses of polarity s from Gmin to G on the planning integral."""
        g, m, p = (np.asarray(self._knots[i]) for i in (0, 3 if down else 1, 4 if down else 2))
        x = np.clip(np.asarray(g_S, dtype=np.float64), self.g_min_S, self.g_max_S)
        k = np.clip(np.searchsorted(g, x, side="right") - 1, 0, g.size - 2)
        mx = np.interp(x, g, m)
        return p[k] + self._segment(x - g[k], m[k], mx)

    def pulse_maps(self, g_min_S: Any, g_max_S: Any, shape: Any = 1.0) -> tuple[PulseMap, PulseMap]:
        raise NotImplementedError("a tabular device has no affine pulse map: the simulator runs it through "
                                  "crossbar_sim.tabular; use step_S / pulses_between for planning")

    def step_S(self, g_S: float) -> tuple[float, float]:
        """(|μ_up(G)|, |μ_down(G)|): the mean |ΔG| of one nominal pulse up and down at ``g_S``."""
        return (abs(float(np.interp(g_S, self.g_grid_S, self.dg_up_mean_S))),
                abs(float(np.interp(g_S, self.g_grid_S, self.dg_down_mean_S))))

    def pulses_between(self, g_from_S: np.ndarray | float, g_to_S: np.ndarray | float) -> np.ndarray:
        """Signed nominal pulses from ``g_from_S`` to ``g_to_S``: P_up(G_to) − P_up(G_from) up,
        P_down(G_to) − P_down(G_from) (negative) down, on the planning integral (class doc)."""
        g0 = np.clip(np.asarray(g_from_S, dtype=np.float64), self.g_min_S, self.g_max_S)
        g1 = np.clip(np.asarray(g_to_S, dtype=np.float64), self.g_min_S, self.g_max_S)
        up = self._pulses_to(g1, False) - self._pulses_to(g0, False)
        down = self._pulses_to(g1, True) - self._pulses_to(g0, True)
        return np.where(g1 > g0, up, np.where(g1 < g0, down, 0.0))

    def levels_up_down(self) -> tuple[float, float]:
        return float(self._knots[2][-1]), float(self._knots[4][-1])


DeviceConfig = Annotated[
    Union[IdealDevice, NeuroSimExpDevice, SoftBoundsDevice, LinearStepDevice, TabularDevice],
    Field(discriminator="model"),
]

DEVICE_MODELS: dict[str, type[_DeviceBase]] = {
    "ideal": IdealDevice,
    "neurosim-exp": NeuroSimExpDevice,
    "soft-bounds": SoftBoundsDevice,
    "linear-step": LinearStepDevice,
    "tabular": TabularDevice,
}

# Presets. Each states its source.
PRESETS: dict[str, dict[str, Any]] = {
    # Ag:a-Si synapse as parameterised in NeuroSim (Chen, Peng, Yu, "NeuroSim+", IEDM 2017, and the
    # MLP+NeuroSim device table): Gmin = 1/325 MΩ, Gmax = 1/26 MΩ, 97 potentiation / 100 depression levels,
    # nonlinearity labels +2.4 / −4.88 (A_p = 0.499181·Pmax_p, A_d = 0.200303·Pmax_d), cycle-to-cycle 3.5 %.
    "agsi": {
        "model": "neurosim-exp",
        "g_min_S": 3.0769e-9,
        "g_max_S": 38.462e-9,
        "pmax_ltp": 97,
        "pmax_ltd": 100,
        "a_ltp": 0.499181 * 97,
        "a_ltd": 0.200303 * 100,
        "sigma_c2c": 0.035,
    },
    # The software-equivalent reference: linear, symmetric, 1000 levels, noise-free.
    "ideal": {"model": "ideal", "levels": 1000},
    # A generic symmetric soft-bounds device (aihwkit's SoftBoundsDevice defaults use ~1000 states with
    # dw_min 0.001); 200 levels keeps it comparable to the agsi window.
    "soft-bounds": {"model": "soft-bounds", "levels": 200, "up_down": 0.0},
}


def expand_preset(data: dict[str, Any]) -> dict[str, Any]:
    """Merge ``preset = "name"`` into explicit parameters; keys given beside the preset override it."""
    name = data.get("preset")
    if name is None:
        return data
    if name not in PRESETS:
        raise ValueError(f"unknown device preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    merged = dict(PRESETS[name])
    merged.update(data)
    return merged
