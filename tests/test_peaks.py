"""abs_peak: max |x| of a float32 array from its bit patterns, NaN and infinity included."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from crossbar_ctl.peaks import abs_peak


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 7), st.integers(1, 9)),
              elements=st.floats(allow_nan=False, allow_infinity=False, width=32)))
def test_equals_the_numpy_peak_for_finite_arrays(a: np.ndarray) -> None:
    assert abs_peak(a) == float(np.abs(a).max())


@pytest.mark.parametrize("bad, expected", [(np.inf, np.inf), (-np.inf, np.inf)])
def test_infinity_anywhere_gives_infinity(bad: float, expected: float) -> None:
    a = np.linspace(-0.3, 0.2, 30, dtype=np.float32).reshape(5, 6)
    a[3, 2] = bad
    assert abs_peak(a) == expected


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_nan_anywhere_gives_nan_even_beside_infinity(sign: float) -> None:
    a = np.full((4, 4), 0.1, dtype=np.float32)
    a[0, 0] = sign * np.inf
    a[2, 1] = sign * np.nan
    assert np.isnan(abs_peak(a))


def test_signs_zeros_and_empty_arrays() -> None:
    assert abs_peak(np.array([-0.75, 0.5], dtype=np.float32)) == 0.75
    assert abs_peak(np.array([-0.0, 0.0], dtype=np.float32)) == 0.0
    assert abs_peak(np.zeros((0, 3), dtype=np.float32)) == 0.0
