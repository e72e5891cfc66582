"""SimBackend operations: reads, quantisation, outer-pulse statistics, disturb, reproducibility, the boundary."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import crossbar_ctl
from crossbar_ctl.config import config_from_dict
from crossbar_ctl.errors import BackendError, LimitError
from crossbar_sim.backend import SimBackend

G_MIN, G_MAX = 3.0769e-9, 38.462e-9
R = G_MAX - G_MIN
FINE = {"model": "linear-step", "levels": 100_000}  # ΔG = R/1e5 per nominal pulse: G − Gmin counts pulses
STEP = R / 100_000


def approx(expected: float, rel: float = 1e-6) -> object:
    """pytest.approx without its 1e-12 absolute floor, which would swallow quantities in siemens and amperes."""
    return pytest.approx(expected, rel=rel, abs=0)


def make(device: dict[str, Any] | None = None, rows: int = 8, cols: int = 6, seed: int = 0,
         **sections: Any) -> SimBackend:
    cfg = {"seed": seed, "array": {"tiles": 1, "rows": rows, "cols": cols},
           "device": device or {"preset": "agsi"}, **sections}
    return SimBackend(config_from_dict(cfg))


def counts_of(b: SimBackend) -> np.ndarray:
    return np.rint((b.true_conductance(0) - G_MIN) / STEP).astype(np.int64)


def scrambled(b: SimBackend, n: int = 25, seed: int = 0) -> None:
    """Bring a tile to a varied state."""
    rows, cols = b.shape(0)
    b.program(0, np.random.default_rng(seed).integers(0, n, (rows, cols)).astype(np.int32))


# ------------------------------------------------------------------------------------------- reads
def test_read_vmm_and_transpose_equal_g_times_v() -> None:
    b = make(rows=30, cols=20)
    scrambled(b)
    g = b.true_conductance(0)
    rng = np.random.default_rng(1)
    v = rng.uniform(-0.2, 0.2, (5, 30))
    out = b.read_vmm(0, v)
    assert out.shape == (5, 20)
    ref = v.astype(np.float32).astype(np.float64) @ g
    scale = np.abs(v) @ g
    assert np.all(np.abs(out - ref) <= 1e-6 * scale)
    vt = rng.uniform(-0.2, 0.2, (4, 20))
    out_t = b.read_vmm_t(0, vt)
    assert out_t.shape == (4, 30)
    ref_t = vt.astype(np.float32).astype(np.float64) @ g.T
    assert np.all(np.abs(out_t - ref_t) <= 1e-6 * (np.abs(vt) @ g.T))
    one = b.read_vmm(0, v[0])  # a single vector: same values up to float32 summation order (gemv vs gemm)
    assert one.shape == (20,)
    assert np.all(np.abs(one - ref[0]) <= 1e-6 * scale[0])
    assert np.all(np.abs(one - out[0]) <= 2e-6 * scale[0])
    np.testing.assert_array_equal(b.read_conductance(0), g)


def test_reads_follow_writes() -> None:
    b = make(rows=4, cols=3)
    v = np.full(4, 0.1)
    before = b.read_vmm(0, v)
    b.pulse_cell(0, 2, 1, 2.0, 1e-6, count=20)
    after = b.read_vmm(0, v)
    g = b.true_conductance(0)
    assert after[1] > before[1] and after[0] == before[0]
    assert after[1] == approx(0.1 * g[:, 1].sum(), rel=1e-6)


def test_read_noise_has_the_predicted_output_variance() -> None:
    sigma = 0.05
    b = make(rows=40, cols=10, read={"read_noise": sigma})
    scrambled(b, 60)
    g = b.true_conductance(0)
    v = np.random.default_rng(2).uniform(-0.2, 0.2, 40)
    n = 20_000
    out = b.read_vmm(0, np.tile(v, (n, 1))).astype(np.float64)
    mean = v @ g
    var = sigma**2 * (v**2) @ (g**2)
    assert np.all(np.abs(out.mean(0) - mean) < 5 * np.sqrt(var / n))
    np.testing.assert_allclose(out.var(0), var, rtol=5 * math.sqrt(2 / n))
    vt = np.random.default_rng(3).uniform(-0.2, 0.2, 10)
    out_t = b.read_vmm_t(0, np.tile(vt, (n, 1))).astype(np.float64)
    np.testing.assert_allclose(out_t.var(0), sigma**2 * (g**2) @ (vt**2), rtol=5 * math.sqrt(2 / n))
    reads = np.stack([b.read_conductance(0) for _ in range(400)])
    rel = reads / g - 1
    assert rel.std() == approx(sigma, rel=5 * math.sqrt(2 / rel.size))
    cells = np.array([b.read_cell(0, 3, 4) for _ in range(4000)]) / (0.2 * g[3, 4])
    assert cells.std() == approx(sigma, rel=0.06)
    assert np.array_equal(b.true_conductance(0), g)  # reads below threshold never write


def test_dac_quantises_inputs_to_uniform_levels() -> None:
    bits = 4  # 15 levels over [−0.2, 0.2] V: step 0.2/7
    b = make(rows=6, cols=1, read={"dac_bits": bits}, device=FINE)
    b.program(0, np.arange(1, 7, dtype=np.int32)[:, None] * 100)
    g = b.true_conductance(0)[:, 0]
    step = 0.2 / 7
    v = np.array([0.0, 0.3 * step, 0.51 * step, -2.49 * step, 0.199, 0.25])  # 0.25 V saturates at 0.2
    vq = np.array([0.0, 0.0, step, -2 * step, 7 * step, 7 * step])
    out = b.read_vmm(0, v)
    assert out[0] == approx(vq @ g, rel=1e-6)
    b_ideal = make(rows=6, cols=1, device=FINE)
    b_ideal.program(0, np.arange(1, 7, dtype=np.int32)[:, None] * 100)
    assert b_ideal.read_vmm(0, v)[0] == approx(v @ g, rel=1e-6)


def test_adc_quantises_and_saturates_outputs() -> None:
    fs = 1e-9
    b = make(rows=2, cols=4, device=FINE, read={"adc_bits": 3, "adc_full_scale_A": fs})  # levels k·fs/3, |k| ≤ 3
    b.program(0, np.array([[0, 0, 0, 0], [0, 0, 0, 0]], dtype=np.int32))
    g = b.true_conductance(0)
    v = np.array([[0.0, 0.0], [0.05, 0.0], [0.06, 0.05], [0.1, 0.1], [0.2, 0.2], [-0.2, -0.2], [-0.1, -0.1]])
    raw = v @ g
    out = b.read_vmm(0, v)
    expected = np.clip(np.rint(raw / (fs / 3)), -3, 3) * (fs / 3)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-24)
    assert np.all(np.abs(out) <= fs * (1 + 1e-6))
    assert set(np.rint(out[:, 0] / (fs / 3)).astype(int)) == {0, 1, 2, 3, -3, -2}
    assert out[4, 0] == approx(fs, rel=1e-6) and out[5, 0] == approx(-fs, rel=1e-6)
    # default full scale: v_read·Gmax·(lines summed)
    b2 = make(rows=2, cols=4, device=FINE, read={"adc_bits": 8})
    assert b2._i_full_scale(2) == approx(0.2 * G_MAX * 2)


def test_one_bit_converters_are_refused() -> None:
    with pytest.raises(BackendError, match="dac_bits"):
        make(read={"dac_bits": 1})
    with pytest.raises(BackendError, match="adc_bits"):
        make(read={"adc_bits": 1})


# ------------------------------------------------------------------------------------------- outer pulse
def test_outer_pulse_counts_are_binomial_slots_pq() -> None:
    rows, cols, slots, phases = 120, 100, 32, 6
    b = make(FINE, rows=rows, cols=cols, seed=1)
    p = np.repeat([0.1, 0.5, 0.9], rows // 3)
    q = np.repeat([0.2, 0.7], cols // 2)
    prev = counts_of(b)
    samples = []
    for _ in range(phases):
        b.outer_pulse(0, p, q, 1, slots)
        now = counts_of(b)
        samples.append(now - prev)
        prev = now
    c = np.stack(samples)
    for pi in (0.1, 0.5, 0.9):
        for qj in (0.2, 0.7):
            x = c[:, p == pi][:, :, q == qj].ravel()
            m = slots * pi * qj
            var = slots * pi * qj * (1 - pi * qj)
            assert x.mean() == pytest.approx(m, abs=5 * math.sqrt(var / x.size))
            assert x.var() == approx(var, rel=0.08)
            assert x.min() >= 0 and x.max() <= slots


def test_outer_pulse_expected_mode_rounds_the_mean_stochastically() -> None:
    rows, cols, slots = 100, 100, 32
    b = make(FINE, rows=rows, cols=cols, seed=2)
    p = np.full(rows, 0.55)
    q = np.full(cols, 0.3)
    b.outer_pulse(0, p, q, 1, slots, mode="expected")
    c = counts_of(b)
    m = slots * 0.55 * 0.3  # 5.28
    assert set(np.unique(c)) <= {5, 6}
    assert c.mean() == pytest.approx(m, abs=5 * math.sqrt(0.28 * 0.72 / c.size))


def test_outer_pulse_nearest_mode_is_deterministic_rounding() -> None:
    rows, cols, slots = 6, 5, 32
    b = make(FINE, rows=rows, cols=cols, seed=2)
    p = np.array([0.55, 0.1, 0.2, 0.0, 1.0, 0.4])
    q = np.array([0.3, 0.05, 1.0, 0.5, 0.25])
    b.outer_pulse(0, p, q, 1, slots, mode="nearest")
    np.testing.assert_array_equal(counts_of(b), np.floor(slots * np.outer(p, q) + 0.5))
    assert "nearest" in b.capabilities.outer_modes


def test_outer_pulse_polarity_and_inactive_lines_untouched() -> None:
    rows, cols = 20, 16
    b = make({"preset": "agsi", "sigma_c2c": 0.05}, rows=rows, cols=cols)
    scrambled(b, 50)
    before = b.true_conductance(0)
    rng = np.random.default_rng(3)
    p = np.where(rng.random(rows) < 0.5, rng.random(rows), 0.0)
    q = np.where(rng.random(cols) < 0.25, rng.random(cols), 0.0)
    p[0], q[0] = 0.9, 0.9
    b.outer_pulse(0, p, q, -1, 32)
    after = b.true_conductance(0)
    untouched = (p[:, None] == 0) | (q[None, :] == 0)
    assert np.array_equal(after[untouched], before[untouched])
    assert np.mean(after[~untouched] - before[~untouched]) < 0
    b.outer_pulse(0, p, q, 1, 32)
    assert np.array_equal(b.true_conductance(0)[untouched], before[untouched])
    quiet = make({"preset": "agsi", "sigma_c2c": 0.0}, rows=rows, cols=cols)
    scrambled(quiet, 50)
    before = quiet.true_conductance(0)
    quiet.outer_pulse(0, p, q, -1, 32)
    after = quiet.true_conductance(0)
    assert np.all(after <= before) and after[0, 0] < before[0, 0]
    quiet.outer_pulse(0, p, q, 1, 32)
    assert np.all(quiet.true_conductance(0) >= after)


def test_half_select_disturb_rate_in_outer_pulse() -> None:
    rows, cols, slots, h = 200, 100, 32, 0.2
    b = make({**FINE, "half_select_disturb": h}, rows=rows, cols=cols, seed=4)
    p = np.zeros(rows)
    p[:100] = 0.5
    q = np.zeros(cols)
    q[:50] = 0.4
    b.outer_pulse(0, p, q, 1, slots)
    c = counts_of(b)
    # p = q = 0: never touched
    assert np.all(c[100:, 50:] == 0)
    # inactive row, active column: disturbs ~ Binomial(slots, h·q)
    x = c[100:, :50].ravel()
    assert x.mean() == pytest.approx(slots * h * 0.4, abs=5 * math.sqrt(slots * h * 0.4 / x.size))
    assert x.var() == approx(slots * h * 0.4 * (1 - h * 0.4), rel=0.1)
    x = c[:100, 50:].ravel()
    assert x.mean() == pytest.approx(slots * h * 0.5, abs=5 * math.sqrt(slots * h * 0.5 / x.size))
    # both active: coincidences plus disturbs in the half-selected slots
    x = c[:100, :50].ravel()
    pc, ph = 0.2, 0.5 + 0.4 - 2 * 0.2
    assert x.mean() == pytest.approx(slots * (pc + h * ph), abs=5 * math.sqrt(x.var() / x.size))
    # the same mean in expected mode
    b2 = make({**FINE, "half_select_disturb": h}, rows=rows, cols=cols, seed=4)
    b2.outer_pulse(0, p, q, 1, slots, mode="expected")
    c2 = counts_of(b2)
    assert c2[100:, :50].mean() == pytest.approx(slots * h * 0.4, abs=0.05)
    assert np.all(c2[100:, 50:] == 0)


def test_half_select_above_threshold_switches_deterministically() -> None:
    # |V|/2 = 1.5 V > V_th = 1.2 V: every half-selected slot is a pulse of (1.5 − 1.2)/0.8 = 0.375 nominal pulses
    b = make(FINE, rows=3, cols=3)
    b.outer_pulse(0, np.array([1.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.0]), 1, 8, v_pulse_V=3.0)
    c = (b.true_conductance(0) - G_MIN) / STEP
    s = (3.0 - 1.2) / 0.8
    expected = np.array([[8 * s, 8 * s, 8 * 0.375], [8 * 0.375, 8 * 0.375, 0], [8 * 0.375, 8 * 0.375, 0]])
    np.testing.assert_allclose(c, expected, rtol=1e-9, atol=1e-9)
    b = make(FINE, rows=3, cols=3)
    b.pulse_cell(0, 1, 1, 3.0, 1e-6, count=4)
    c = (b.true_conductance(0) - G_MIN) / STEP
    expected = np.zeros((3, 3))
    expected[1, :] = expected[:, 1] = 4 * 0.375
    expected[1, 1] = 4 * s
    np.testing.assert_allclose(c, expected, rtol=1e-9, atol=1e-9)


def test_half_select_disturb_in_program() -> None:
    # above threshold: deterministic rule H = (row max − own) + (column sum − own)
    b = make(FINE, rows=3, cols=4)
    counts = np.zeros((3, 4), dtype=np.int32)
    counts[1, 2] = 4
    counts[2, 2] = 2
    b.program(0, counts, v_set_V=3.0)
    c = (b.true_conductance(0) - G_MIN) / STEP
    s, e = 2.25, 0.375
    expected = np.array([[0, 0, 6 * e, 0],
                         [4 * e, 4 * e, 4 * s + 2 * e, 4 * e],
                         [2 * e, 2 * e, 2 * s + 4 * e, 2 * e]])
    np.testing.assert_allclose(c, expected, rtol=1e-9, atol=1e-9)
    # below threshold: Binomial(H, h) disturb pulses of one nominal pulse each
    h = 0.1
    b = make({**FINE, "half_select_disturb": h}, rows=200, cols=100, seed=5)
    counts = np.zeros((200, 100), dtype=np.int32)
    counts[0, :] = 10
    b.program(0, counts)
    c = counts_of(b)
    assert np.all(c[0] == 10)
    x = c[1:].ravel()  # column sum 10 − own 0
    assert x.mean() == pytest.approx(10 * h, abs=5 * math.sqrt(10 * h * (1 - h) / x.size))
    assert x.var() == approx(10 * h * (1 - h), rel=0.08)


def test_read_cell_above_threshold_is_a_pulse() -> None:
    b = make(FINE, rows=2, cols=2)
    i = b.read_cell(0, 0, 1, 2.0)  # one nominal pulse of width_ref_s, then the measurement
    g = b.true_conductance(0)
    assert g[0, 1] == approx(G_MIN + STEP, rel=1e-12)
    assert i == approx(g[0, 1] * 2.0, rel=1e-12)
    assert np.all(g.ravel()[[0, 2, 3]] == G_MIN)
    i = b.read_cell(0, 0, 1, -1.6)  # half a pulse down
    assert b.true_conductance(0)[0, 1] == approx(G_MIN + 0.5 * STEP, rel=1e-9)
    assert i == approx(-1.6 * (G_MIN + 0.5 * STEP), rel=1e-9)


# ------------------------------------------------------------------------------------------- reproducibility
NOISY = {"preset": "agsi", "sigma_d2d_g_min": 0.05, "sigma_d2d_shape": 0.05, "stuck_at_min_fraction": 0.02,
         "half_select_disturb": 0.01}


def _sequence(b: SimBackend, seed: int = 0, steps: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    outs = []
    for _ in range(steps):
        b.program(0, rng.integers(-15, 16, (30, 20)).astype(np.int32))
        b.outer_pulse(0, rng.random(30), rng.random(20), 1, 16)
        b.outer_pulse(1, rng.random(10), rng.random(5), -1, 16, mode="expected")
        b.pulse_cell(1, 3, 2, 2.2, 1e-6, count=3)
        outs.append(b.read_cell(0, 1, 1, 1.9))
        outs.append(b.read_vmm(0, rng.uniform(0, 0.2, (4, 30))))
        outs.append(b.read_vmm_t(1, rng.uniform(0, 0.2, (2, 5))))
    outs.extend([b.true_conductance(0), b.true_conductance(1)])
    return outs


def _two_tiles(seed: int) -> SimBackend:
    cfg = {"seed": seed, "array": {"tiles": 2, "rows": [30, 10], "cols": [20, 5]}, "device": NOISY,
           "read": {"read_noise": 0.02}}
    return SimBackend(config_from_dict(cfg))


def _same(a: list[Any], b: list[Any]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_same_seed_same_state_different_seed_different() -> None:
    a = _sequence(_two_tiles(1))
    assert _same(a, _sequence(_two_tiles(1)))
    assert not np.array_equal(a[-2], _sequence(_two_tiles(2))[-2])


def test_get_state_set_state_resumes_bit_identically(tmp_path: Path) -> None:
    b = _two_tiles(3)
    _sequence(b, seed=0)
    state = b.get_state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    cont = _sequence(b, seed=1)
    np.savez(tmp_path / "s.npz", **state)
    loaded = dict(np.load(tmp_path / "s.npz"))
    fresh = _two_tiles(99)  # a different seed: everything must come from the state
    fresh.set_state(loaded)
    assert fresh.seq == int(state["seq"])
    assert _same(cont, _sequence(fresh, seed=1))
    with pytest.raises(ValueError, match="lacks"):
        fresh.set_state({k: v for k, v in loaded.items() if k != "rng"})
    with pytest.raises(ValueError, match="shape"):
        make(rows=3, cols=3).set_state({**loaded, "tile0.g": np.zeros((3, 3))})


# ------------------------------------------------------------------------------------------- boundary
def test_connect_gives_a_sim_backend_and_unknown_kinds_list_sim() -> None:
    cfg = config_from_dict({"backend": {"kind": "sim"}, "array": {"tiles": 1, "rows": 4, "cols": 3}})
    with crossbar_ctl.connect(cfg) as b:
        assert isinstance(b, SimBackend)
        assert b.kind == "sim" and b.tile_shapes == ((4, 3),)
        desc = b.describe()
        assert desc["kind"] == "sim" and desc["model"] == "neurosim-exp" and desc["seed"] == 0
        assert "numba" in desc and b.capabilities.native_outer_pulse
    with pytest.raises(BackendError, match="sim"):
        crossbar_ctl.connect({"backend": {"kind": "no-such-array"}})


def test_bad_arguments_raise() -> None:
    b = make(rows=4, cols=3)
    with pytest.raises(ValueError):
        b.read_vmm(0, np.zeros(3))
    with pytest.raises(ValueError):
        b.read_vmm_t(0, np.zeros((2, 4)))
    with pytest.raises(TypeError):
        b.read_vmm(0, np.zeros(4, dtype=complex))
    with pytest.raises(ValueError, match="NaN or infinity"):
        b.read_vmm(0, np.array([0.1, np.nan, 0, 0]))
    with pytest.raises(ValueError, match="NaN or infinity"):
        b.read_vmm_t(0, np.array([[0.0, 0.0, 0.0], [0.0, -np.inf, 0.0]]))
    with pytest.raises(TypeError):
        b.program(0, np.zeros((4, 3)))
    with pytest.raises(ValueError):
        b.program(0, np.zeros((3, 4), dtype=np.int32))
    with pytest.raises(ValueError):
        b.outer_pulse(0, np.full(4, 1.5), np.ones(3), 1, 4)
    with pytest.raises(ValueError):
        b.outer_pulse(0, np.ones(4), np.ones(3), 0, 4)
    with pytest.raises(ValueError):
        b.outer_pulse(0, np.ones(4), np.ones(3), 1, 4, v_pulse_V=-2.0)
    with pytest.raises(IndexError):
        b.read_conductance(1)
    with pytest.raises(IndexError):
        b.pulse_cell(0, 4, 0, 2.0, 1e-6)
    b.close()
    with pytest.raises(BackendError):
        b.read_conductance(0)


def test_limit_violations_raise_and_leave_the_state_untouched() -> None:
    b = make({"preset": "agsi"}, rows=4, cols=3)
    scrambled(b, 30)
    before = b.get_state()
    with pytest.raises(LimitError) as err:
        b.outer_pulse(0, np.ones(4), np.ones(3), 1, 4, v_pulse_V=3.5)
    assert err.value.limit == "max_voltage_V"
    with pytest.raises(LimitError):
        b.read_vmm(0, np.full(4, 3.1))
    with pytest.raises(LimitError):
        b.pulse_cell(0, 0, 0, -3.2, 1e-6)
    with pytest.raises(LimitError):
        b.read_cell(0, 0, 0, 4.0)
    with pytest.raises(LimitError):
        b.program(0, np.full((4, 3), 2000, dtype=np.int32))
    with pytest.raises(LimitError):
        b.program(0, np.ones((4, 3), dtype=np.int32), v_set_V=3.01)
    with pytest.raises(LimitError):
        b.pulse_cell(0, 0, 0, 2.0, 1.0)
    after = b.get_state()
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
