"""Host-side passes of the read path in one sweep each (Numba, serial): inputs to DAC voltages, currents back to
outputs.

A forward read of a batch scales every input row x_b to the read range, v_b = x_b·v_read/max|x_b|, and turns the
column currents back into outputs, y_b = (i+ − i−)·max|x_b|/(G_scale·v_read). With numpy that was a batch
gather, a bias-column copy, a row max, a row min and a scaling pass over the (B, 785) inputs, several passes
over the small hidden layers (numpy's row reductions over 10 or 101 columns cost more than the data), and a
ReLU, a bias copy and a gate product between layers. These kernels do each conversion in one pass and compute
exactly what those numpy expressions computed (float32 arithmetic, in the same order), so results do not change.

They run on one thread: each is a fraction of a millisecond, and a parallel region on cores shared with other
work can wait a whole scheduler time slice for a worker thread.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def inputs_to_volts(src: np.ndarray, rows: np.ndarray, relu: bool, divisor: np.float32, v_read: np.float32,
                    xb: np.ndarray, v: np.ndarray, scale: np.ndarray) -> None:
    """Row b of the layer input: xb[b] = [x, 1] with x = src[rows[b]] as float32, divided by ``divisor`` unless it
    is 1 (integer pixel codes: float32(code)/divisor, the loader's own conversion) or else max(x, 0) if ``relu``;
    scale[b] = max|xb[b]|; v[b, :n+1] = xb[b]·(v_read/scale[b]) (float32). The columns of ``v`` beyond n+1
    (undriven rows of a larger tile) are left as they are. A NaN or infinite input gives NaN volts, which the
    backend refuses.

    max|x| is taken on the bit patterns: for float32 without the sign bit, integer order is magnitude order
    (a NaN sorts above infinity), and an integer max vectorises where a float max with NaN rules does not."""
    n = xb.shape[1] - 1
    one = np.float32(1.0)
    zero = np.float32(0.0)
    magnitude = np.int32(0x7FFFFFFF)
    peak_bits = np.empty(1, dtype=np.int32)
    peak = peak_bits.view(np.float32)
    for b in range(rows.shape[0]):
        s = src[rows[b]]
        row = xb[b]
        if divisor != one:
            for k in range(n):
                row[k] = np.float32(s[k]) / divisor
        elif relu:  # as np.maximum(t, 0) computes it: -0.0 becomes 0.0, NaN stays
            for k in range(n):
                t = np.float32(s[k])
                row[k] = zero if t <= zero else t
        else:
            for k in range(n):
                row[k] = s[k]
        row[n] = one
        bits = row.view(np.int32)
        top = bits[n]  # the bias input 1.0
        for k in range(n):
            a = bits[k] & magnitude
            top = a if a > top else top
        peak_bits[0] = top
        scale[b] = peak[0]
        r = v_read / peak[0]
        out = v[b]
        for k in range(n + 1):
            out[k] = row[k] * r


@numba.njit(cache=True)
def currents_to_outputs(i: np.ndarray, m: int, scale: np.ndarray, c: np.float32, out: np.ndarray) -> None:
    """out[b, j] = (i[b, j] − i[b, m + j])·(scale[b]/c), float32: the differential columns of a forward read
    rescaled to weight units."""
    for b in range(out.shape[0]):
        s = scale[b] / c
        for j in range(m):
            out[b, j] = (i[b, j] - i[b, m + j]) * s


@numba.njit(cache=True)
def deltas_to_volts(delta: np.ndarray, v_read: np.float32, v: np.ndarray, scale: np.ndarray) -> None:
    """Transpose-read drive of a (B, m) batch: scale[b] = max|delta[b]| as float32 (1 if 0), v[b, :m] =
    delta[b]·(v_read/scale[b]) as float32 and v[b, m:2m] its negation (the G− columns); later columns untouched.
    A NaN or infinite delta gives NaN volts, which the backend refuses."""
    m = delta.shape[1]
    one = np.float32(1.0)
    for b in range(delta.shape[0]):
        hi = delta[b, 0]
        lo = delta[b, 0]
        for j in range(1, m):
            t = delta[b, j]
            if t > hi:
                hi = t
            if t < lo:
                lo = t
        peak = np.float32(hi if hi >= -lo else -lo)
        if peak == 0:
            peak = one
        scale[b] = peak
        r = v_read / peak
        for j in range(m):
            t = np.float32(delta[b, j] * r)
            v[b, j] = t
            v[b, m + j] = -t


@numba.njit(cache=True)
def currents_to_deltas(i: np.ndarray, scale: np.ndarray, c: np.float32, pre: np.ndarray, out: np.ndarray) -> None:
    """Deltas of the layer below from a transpose read: out[b, k] = i[b, k]·(scale[b]/c)·1[pre[b, k] > 0] for the
    n = out.shape[1] input rows without the bias (float32, the gate applied as a product by 1 or 0)."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for b in range(out.shape[0]):
        s = scale[b] / c
        for k in range(out.shape[1]):
            out[b, k] = (i[b, k] * s) * (one if pre[b, k] > 0 else zero)
