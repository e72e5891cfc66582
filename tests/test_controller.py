"""The controller: weight mapping, update -> pulse scaling, polarity, rounding, limits, op counts."""
from __future__ import annotations

import numpy as np
import pytest

from crossbar_ctl.config import load_config
from crossbar_ctl.controller import Controller, stochastic_round
from crossbar_ctl.decomposition.base import DenseUpdate, LowRankUpdate
from crossbar_ctl.errors import LimitError
from tests.fakes import RecordingBackend

SIZES = [(9, 4), (5, 3)]


def make(overrides: list[str] | None = None, seed: int = 0) -> tuple[Controller, RecordingBackend]:
    cfg = load_config(None, ["array.rows=[9, 5]", "array.cols=[8, 6]", 'device.preset="ideal"',
                             "training.weight_range=1.0", *(overrides or [])])
    be = RecordingBackend(cfg)
    return Controller(be, cfg, SIZES, np.random.default_rng(seed)), be


def test_weights_round_trip_through_the_array() -> None:
    ctl, be = make()
    rng = np.random.default_rng(1)
    w = rng.uniform(-0.5, 0.5, SIZES[0])
    err = ctl.program_weights(0, w)
    lay = ctl.layers[0]
    assert err < lay.dw  # within one pulse after write-verify
    np.testing.assert_allclose(ctl.read_weights(0), w, atol=lay.dw)
    x = rng.uniform(0, 1, (6, 9))
    np.testing.assert_allclose(ctl.forward(0, x), x @ ctl.read_weights(0), rtol=1e-5, atol=1e-6)
    d = rng.standard_normal((6, 4))
    np.testing.assert_allclose(ctl.backward(0, d), d @ ctl.read_weights(0).T, rtol=1e-5, atol=1e-6)
    # reads are driven within the read voltage, G− columns get the negated transpose drive
    v = [c for c in be.calls if c[0] == "read_vmm_t"][-1][2]
    assert np.abs(v).max() <= ctl.v_read + 1e-7
    np.testing.assert_allclose(v[:, 4:8], -v[:, :4])


def test_rank_seq_expected_update_is_minus_lr_uv() -> None:
    ctl, be = make()
    lay = ctl.layers[0]
    u = np.array([0.3, -0.2, 0.0, 0.5, -0.1, 0.2, 0.0, 0.4, -0.3])
    v = np.array([0.2, -0.4, 0.1, -0.05])
    lr = 0.05
    ctl.apply_update(0, LowRankUpdate(u[:, None], v[:, None]), lr, "rank-seq")
    phases = [c for c in be.calls if c[0] == "outer_pulse"]
    assert len(phases) == 4  # both u and v are signed: four sign quadrants
    dw = np.zeros(SIZES[0])
    for _, tile, p, q, pol, slots, mode in phases:
        assert mode == "stochastic" and slots == ctl.slots
        assert np.all(p[9:] == 0) and np.all(q[4:] == 0)  # only the G+ columns are driven
        dw += pol * slots * np.outer(p[:9], q[:4]) * lay.dw
    np.testing.assert_allclose(dw, -lr * np.outer(u, v), rtol=1e-12, atol=1e-15)


def test_non_negative_pair_needs_one_phase_and_polarity_follows_sign() -> None:
    ctl, be = make()
    u = np.abs(np.linspace(0.1, 1, 9))
    v = np.abs(np.linspace(0.2, 1, 4))
    ctl.apply_update(0, LowRankUpdate(u[:, None], v[:, None]), 0.01, "rank-seq")
    ctl.apply_update(0, LowRankUpdate(u[:, None], -v[:, None]), 0.01, "rank-seq")
    phases = [c for c in be.calls if c[0] == "outer_pulse"]
    assert [c[4] for c in phases] == [-1, +1]  # positive gradient depresses, negative potentiates
    assert ctl.counts.phases == 2


def test_large_phase_is_split_not_clamped() -> None:
    ctl, be = make(["training.outer_slots=4"])
    lay = ctl.layers[0]
    u = np.ones(9)
    v = np.ones(4)
    lr = 10.5 * lay.dw  # needs 10.5 pulses per device, 4 slots per phase -> 3 phases
    ctl.apply_update(0, LowRankUpdate(u[:, None], -v[:, None]), lr, "rank-seq")
    phases = [c for c in be.calls if c[0] == "outer_pulse"]
    assert len(phases) == 3
    total = sum(c[5] * np.outer(c[2][:9], c[3][:4]) for c in phases)
    np.testing.assert_allclose(total, 10.5)
    assert all(c[2].max() <= 1 and c[3].max() <= 1 for c in phases)


def test_stochastic_rounding_is_unbiased_and_nearest_vanishes() -> None:
    x = np.full(200000, 0.3)
    r = stochastic_round(x, np.random.default_rng(0))
    assert set(np.unique(r)) == {0, 1}
    assert r.mean() == pytest.approx(0.3, abs=4 * np.sqrt(0.21 / x.size))

    g = np.full(SIZES[0], -0.2)  # update of +0.2·lr·... = 0.3 pulses per device
    for stochastic, expect_zero in ((True, False), (False, True)):
        ctl, be = make([f"training.stochastic_rounding={'true' if stochastic else 'false'}"])
        lay = ctl.layers[0]
        lr = 0.3 * lay.dw / 0.2
        total = np.zeros(SIZES[0])
        for _ in range(400):
            ctl.apply_update(0, DenseUpdate(g), lr, "rank-sum")
        progs = [c[2][:9, :4] for c in be.calls if c[0] == "program"]
        if expect_zero:
            assert progs == []  # every update rounds to zero pulses: the vanishing-update effect
        else:
            total = sum(progs) * lay.dw
            # expected −lr·g per step, 400 steps; binomial spread per device sqrt(400·0.21)·dw
            np.testing.assert_allclose(total.mean(), 400 * 0.3 * lay.dw, rtol=0.05)
            assert abs(total - 400 * 0.3 * lay.dw).max() < 5 * np.sqrt(400 * 0.21) * lay.dw


def test_rank_sum_reconstructs_low_rank_and_programs_rows() -> None:
    ctl, be = make(["training.stochastic_rounding=false"])
    lay = ctl.layers[0]
    u = np.arange(9.0)[:, None]
    v = np.array([1.0, -1.0, 2.0, 0.0])[:, None]
    ctl.apply_update(0, LowRankUpdate(u, v), lay.dw, "rank-sum")
    (prog,) = [c[2] for c in be.calls if c[0] == "program"]
    np.testing.assert_array_equal(prog[:9, :4], -np.rint(u @ v.T))
    assert np.all(prog[:, 4:] == 0)  # G− references untouched
    assert ctl.counts.row_programs == 8  # row 0 of u is zero: nothing to program there


def test_limit_refuses_before_anything_is_sent() -> None:
    ctl, be = make(["limits.max_pulses_per_device=5"])
    lay = ctl.layers[0]
    n_before = len(be.calls)
    with pytest.raises(LimitError, match="max_pulses_per_device") as info:
        ctl.apply_update(0, DenseUpdate(np.full(SIZES[0], -1.0)), 6 * lay.dw, "rank-sum")
    assert info.value.value == 6 and info.value.allowed == 5
    assert len(be.calls) == n_before


def test_energy_limit() -> None:
    ctl, be = make(["limits.max_energy_per_op_J=1e-18"])
    with pytest.raises(LimitError, match="max_energy_per_op_J"):
        ctl.apply_update(0, DenseUpdate(np.full(SIZES[0], -1.0)), 3 * ctl.layers[0].dw, "rank-sum")
    assert "program" not in be.kinds()


def test_compliance_checked_at_setup() -> None:
    with pytest.raises(LimitError, match="compliance_current_A"):
        make(["limits.compliance_current_A=1e-12"])


def test_layer_must_fit_its_tile() -> None:
    cfg = load_config(None, ["array.rows=[9, 5]", "array.cols=[7, 6]"])
    with pytest.raises(ValueError, match="needs a 9 x 8 tile"):
        Controller(RecordingBackend(cfg), cfg, SIZES, np.random.default_rng(0))


def test_counts_track_pulses_and_ops() -> None:
    ctl, be = make(["training.stochastic_rounding=false"])
    lay = ctl.layers[0]
    g = np.zeros(SIZES[0])
    g[2, 1] = -3.0
    ctl.apply_update(0, DenseUpdate(g), lay.dw, "rank-sum")
    s = ctl.counts.summary()
    assert s["device_pulses"] == 3 and s["max_pulses_per_device"] == 3 and s["row_programs"] == 1


def test_backend_boundary_refuses_energy_over_limit_before_sending() -> None:
    cfg = load_config(None, ["array.rows=[9, 5]", "array.cols=[8, 6]", 'device.preset="ideal"',
                             "limits.max_energy_per_op_J=1e-15"])
    be = RecordingBackend(cfg)
    g, v, t = cfg.device.g_max_S, cfg.pulse.v_set_V, cfg.pulse.width_s
    per_pulse = v * v * g * t  # 1.5e-13 J at 2 V, 38 nS, 1 us: over the 1e-15 J limit
    with pytest.raises(LimitError, match="max_energy_per_op_J") as info:
        be.pulse_cell(0, 1, 1, v, t, 1)
    assert info.value.value == pytest.approx(per_pulse, rel=1e-12, abs=0)
    with pytest.raises(LimitError, match="max_energy_per_op_J"):
        be.outer_pulse(0, np.full(9, 0.1), np.full(8, 0.1), 1, 4)
    n = np.zeros((9, 8), dtype=np.int32)
    n[0, 0] = 1
    with pytest.raises(LimitError, match="max_energy_per_op_J"):
        be.program(0, n)
    assert be.calls == []  # nothing reached the array


def _drive_reads(be: RecordingBackend, kind: str) -> list[np.ndarray]:
    return [c[2] for c in be.calls if c[0] == kind]


def test_forward_inputs_match_forward_of_the_biased_batch_exactly() -> None:
    ctl, be = make(["array.rows=[12, 5]"])  # tile 0 has 3 undriven rows
    rng = np.random.default_rng(4)
    ctl.program_weights(0, rng.uniform(-0.5, 0.5, SIZES[0]))
    src = rng.standard_normal((20, 8)).astype(np.float32)
    src[3] = 0.0  # an all-zero row: scale 1 (the bias)
    rows = np.array([5, 3, 3, 19, 0])
    for relu in (False, True):
        x = np.maximum(src[rows], 0.0) if relu else src[rows]
        xb = np.hstack([x, np.ones((len(rows), 1), np.float32)])
        ref = ctl.forward(0, xb)
        v_ref = _drive_reads(be, "read_vmm")[-1]
        got_x, got = ctl.forward_inputs(0, src, rows, relu=relu)
        v_got = _drive_reads(be, "read_vmm")[-1]
        assert got_x.dtype == np.float32 and got.dtype == np.float32
        np.testing.assert_array_equal(got_x, xb)
        np.testing.assert_array_equal(v_got, v_ref)  # same volts, undriven rows at 0 V
        np.testing.assert_array_equal(got, ref)
    # uint8 codes with a divisor give the float pixels
    codes = rng.integers(0, 256, (6, 8)).astype(np.uint8)
    pix = codes.astype(np.float32) / np.float32(255)
    xb, z = ctl.forward_inputs(0, codes, np.arange(6), divisor=255.0)
    np.testing.assert_array_equal(xb[:, :-1], pix)
    np.testing.assert_array_equal(z, ctl.forward(0, np.hstack([pix, np.ones((6, 1), np.float32)])))
    with pytest.raises(IndexError, match="rows"):
        ctl.forward_inputs(0, src, np.array([20]))
    with pytest.raises(IndexError, match="rows"):
        ctl.forward_inputs(0, src, np.array([-1]))
    with pytest.raises(ValueError, match="8 inputs"):
        ctl.forward_inputs(0, src[:, :7], rows)
    with pytest.raises(ValueError, match="not both"):
        ctl.forward_inputs(0, codes, rows[:2], relu=True, divisor=255.0)


def test_non_finite_inputs_are_refused_by_the_read() -> None:
    ctl, be = make()
    src = np.ones((3, 8), np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        src[1, 2] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            ctl.forward_inputs(0, src, np.arange(3))
        with pytest.raises(ValueError, match="NaN or infinity"):
            ctl.backward(0, np.where(np.arange(4) == 1, bad, 1.0)[None, :])
    assert "read_vmm" not in be.kinds() and "read_vmm_t" not in be.kinds()


def test_backward_relu_is_the_gated_backward_without_the_bias_row() -> None:
    ctl, be = make(["array.cols=[8, 9]"])  # tile 1 has 3 undriven columns
    rng = np.random.default_rng(5)
    ctl.program_weights(1, rng.uniform(-0.5, 0.5, SIZES[1]))
    delta = rng.standard_normal((7, 3)).astype(np.float32)
    delta[2] = 0.0
    pre = rng.standard_normal((7, 4)).astype(np.float32)
    ref = ctl.backward(1, delta)[:, :-1] * (pre > 0)
    v_ref = _drive_reads(be, "read_vmm_t")[-1]
    got = ctl.backward_relu(1, delta, pre)
    np.testing.assert_array_equal(_drive_reads(be, "read_vmm_t")[-1], v_ref)
    assert np.all(v_ref[:, 6:] == 0)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError, match="pre for layer 1"):
        ctl.backward_relu(1, delta, pre[:, :3])


def test_deferred_rank_seq_counts_equal_the_sum_of_outer_products() -> None:
    from crossbar_ctl.controller import FOLD, OpCounts

    rng = np.random.default_rng(6)
    counts = OpCounts(per_device=[np.zeros((9, 4))])
    terms = [(rng.random(9), rng.random(4)) for _ in range(FOLD + 7)]  # one fold, and seven pending
    for a, b in terms:
        counts.add_rank1(0, a, b, times=3)
    expected = sum(3 * np.outer(a, b) for a, b in terms)
    np.testing.assert_allclose(counts.per_device_counts()[0], expected, rtol=1e-12)
    counts.add_rank1(0, terms[0][0], terms[0][1])  # the buffer is reused after a fold
    np.testing.assert_allclose(counts.per_device_counts()[0], expected + np.outer(*terms[0]), rtol=1e-12)


def test_dense_update_must_match_the_layer() -> None:
    ctl, be = make()
    with pytest.raises(ValueError, match=r"must be \(9, 4\)"):
        ctl.apply_update(0, DenseUpdate(np.zeros((10, 4))), 0.1, "rank-sum")
    assert "program" not in be.kinds()
