"""The read path: DAC and ADC quantisation and read noise of a vector–matrix multiply (numpy + BLAS).

Quantiser (DAC and ADC alike): b bits give L = 2^b − 1 uniform levels, symmetric about and including 0,
spanning [−FS, FS]: step Δ = FS/(2^(b−1) − 1), x_q = clip(rint(x/Δ), −(2^(b−1) − 1), 2^(b−1) − 1)·Δ
(rint rounds half to even; values beyond ±FS saturate). b = 0 is ideal; b = 1 (a single level) is refused.

* DAC: FS = ``[read].v_read_V`` (the full-scale read voltage); inputs are quantised before the multiply.
* ADC: FS = ``[read].adc_full_scale_A``, or when that is 0 the worst case v_read_V·Gmax·(lines summed):
  rows for ``read_vmm``, cols for ``read_vmm_t`` (Gmax nominal, from ``[device].g_max_S``).

Read noise: each device read contributes G_ij·(1 + σ·ε_ij), ε ~ N(0, 1) independent per device and read. The
output current I_j = Σ_i v_i G_ij (1 + σ ε_ij) is then exactly normal with mean Σ_i v_i G_ij and variance
σ²·Σ_i v_i² G_ij², which is what we draw (one normal per output, not per device).
"""
from __future__ import annotations

import numpy as np

from crossbar_ctl.blas import wide

from crossbar_ctl.errors import BackendError


def check_bits(bits: int, what: str) -> int:
    """Validate a converter resolution: 0 (ideal) or ≥ 2 bits."""
    if bits == 1:
        raise BackendError(f"{what} = 1 leaves a single quantisation level (0); use 0 (ideal) or at least 2 bits")
    return int(bits)


def quantise(x: np.ndarray, bits: int, full_scale: float) -> np.ndarray:
    """Round ``x`` to the 2^bits − 1 uniform levels over [−full_scale, full_scale], saturating (new array)."""
    half = float((1 << (bits - 1)) - 1)
    step = full_scale / half
    out = np.rint(np.asarray(x, dtype=np.float64) / step)
    np.clip(out, -half, half, out=out)
    out *= step
    return out.astype(x.dtype, copy=False)


def vmm(v: np.ndarray, g32: np.ndarray, g2: np.ndarray | None, sigma: float, rng: np.random.Generator | None,
        dac_bits: int, v_fs: float, adc_bits: int, i_fs: float) -> np.ndarray:
    """I = v·M for v (batch, n) and M = ``g32`` (n, m) float32 (pass a transposed view for Gᵀ), with DAC,
    read noise (needs ``g2`` = M² elementwise and ``rng``) and ADC. Returns float32 (batch, m), amperes."""
    if dac_bits:
        v = quantise(v, dac_bits, v_fs)
    with wide(2.0 * v.shape[0] * g32.shape[0] * g32.shape[1] * (2 if sigma > 0.0 else 1)):
        out = np.dot(v, g32)
        var = np.dot(v * v, g2) if sigma > 0.0 else None
    if var is not None:
        std = np.sqrt(var, out=var)
        std *= np.float32(sigma)
        out += std * rng.standard_normal(out.shape, dtype=np.float32)
    if adc_bits:
        out = quantise(out, adc_bits, i_fs)
    return out
