"""End-to-end training on the simulator: every method learns; same seed, same numbers; resume is exact."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossbar_ctl.cli import main
from crossbar_ctl.config import load_config
from crossbar_ctl.training.mlp import layer_sizes, softmax_xent
from crossbar_ctl.training.trainer import Trainer

SMALL = ["training.limit_train=1500", "training.limit_test=500", "training.epochs=1", "logging.progress=false",
         "training.hidden=[32]", "array.cols=[64, 20]", "array.rows=[785, 33]"]


def small(*extra: str):
    return load_config(None, [*SMALL, *extra])


def test_layer_sizes_and_softmax_delta() -> None:
    assert layer_sizes(784, [100], 10) == [(785, 100), (101, 10)]
    z = np.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    loss, delta, pred = softmax_xent(z.copy(), np.array([1, 2]))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-(np.log(p[0, 1]) + np.log(p[1, 2])) / 2)
    expected = p.copy()
    expected[0, 1] -= 1
    expected[1, 2] -= 1
    np.testing.assert_allclose(delta, expected)
    assert list(pred) == [1, 0]


def _softmax_xent_numpy(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The plain numpy formulation softmax_xent must reproduce bit for bit."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    idx = np.arange(len(y))
    loss = float(-np.mean(np.log(np.maximum(p[idx, y], 1e-30))))
    p[idx, y] -= 1.0
    return loss, p, z.argmax(axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_xent_is_the_numpy_arithmetic_exactly(dtype: type) -> None:
    rng = np.random.default_rng(7)
    for batch, spread in ((1, 1.0), (64, 5.0), (1000, 40.0)):
        z = (rng.standard_normal((batch, 10)) * spread).astype(dtype)
        z[::3, 4] = z[::3, 7]  # ties: the first maximum is the prediction
        y = rng.integers(0, 10, batch)
        loss, delta, pred = softmax_xent(z.copy(), y)
        ref_loss, ref_delta, ref_pred = _softmax_xent_numpy(z.copy(), y)
        assert loss == ref_loss and delta.dtype == ref_delta.dtype
        np.testing.assert_array_equal(delta, ref_delta)
        np.testing.assert_array_equal(pred, ref_pred)
    with pytest.raises(IndexError, match="label"):
        softmax_xent(np.zeros((2, 3)), np.array([0, 3]))


def test_pixel_code_batches_train_exactly_like_float_pixels(mocker) -> None:
    cfg = small('training.method="mbgd"', 'training.mode="rank-sum"', "training.limit_train=256",
                "training.limit_test=100", "training.batch_size=64")
    codes = Trainer(cfg, None, progress=False)
    assert codes._x_src.dtype == np.uint8 and codes._x_divisor == 255.0
    with_codes = codes.run()
    import dataclasses

    from crossbar_ctl.training import trainer as trainer_module

    load = trainer_module.load_dataset
    mocker.patch.object(trainer_module, "load_dataset",
                        side_effect=lambda *a, **k: dataclasses.replace(load(*a, **k), codes_train=None))
    floats = Trainer(cfg, None, progress=False)
    assert floats._x_src is floats.data.x_train and floats._x_divisor == 1.0
    with_floats = floats.run()
    for key in ("final_test_accuracy", "device_pulses", "max_pulses_per_device", "array_ops"):
        assert with_codes[key] == with_floats[key]
    assert [e["train_loss"] for e in with_codes["epochs"]] == [e["train_loss"] for e in with_floats["epochs"]]


@pytest.mark.parametrize("method, mode, rank, passes", [
    ("mbgd", "rank-sum", 1, 1),
    ("svd", "rank-seq", 2, 1),
    ("streaming-pca", "rank-seq", 2, 1),
    ("streaming-pca", "rank-sum", 2, 3),
    ("nmf", "rank-seq", 2, 3),
    ("nmf", "rank-sum", 2, 3),
])
def test_each_method_learns_on_the_ideal_device(method: str, mode: str, rank: int, passes: int) -> None:
    cfg = small('device.preset="ideal"', f'training.method="{method}"', f'training.mode="{mode}"',
                f"training.rank={rank}", "training.batch_size=32", "training.learning_rate=0.2",
                f"training.passes={passes}")
    res = Trainer(cfg, None, progress=False).run()
    assert res["final_test_accuracy"] > 0.5, res["epochs"]  # chance is 0.1
    assert res["array_ops"] > 0 and res["device_pulses"] > 0


def test_sgd_learns_with_batch_one() -> None:
    cfg = small('device.preset="ideal"', 'training.method="sgd"', "training.batch_size=1",
                "training.limit_train=600", "training.learning_rate=0.05")
    res = Trainer(cfg, None, progress=False).run()
    assert res["final_test_accuracy"] > 0.5
    assert res["memory_floats"] == [785 + 32, 33 + 10]
    with pytest.raises(ValueError, match="batch_size = 1"):
        Trainer(small('training.method="sgd"'), None, progress=False)


def test_same_seed_same_results_different_seed_differs(tmp_path: Path) -> None:
    def run(seed: int, out: Path) -> dict:
        Trainer(small(f"seed={seed}", 'training.method="nmf"', "training.rank=2"), out, progress=False).run()
        return json.loads((out / "results.json").read_text())

    a, b, c = run(3, tmp_path / "a"), run(3, tmp_path / "b"), run(4, tmp_path / "c")
    strip = lambda r: [(e["train_loss"], e["test_accuracy"]) for e in r["epochs"]]  # noqa: E731
    assert strip(a) == strip(b)
    assert a["device_pulses"] == b["device_pulses"]
    assert strip(a) != strip(c)


def test_results_json_has_the_promised_fields(tmp_path: Path) -> None:
    code = main(["train", "--out", str(tmp_path), "--quiet", *[f"--set={s}" for s in SMALL],
                 "--set", 'training.method="streaming-pca"', "--set", "training.epochs=2"])
    assert code == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["complete"] is True
    assert [e["epoch"] for e in r["epochs"]] == [1, 2]
    for key in ("train_loss", "test_accuracy", "seconds", "samples_per_s"):
        assert key in r["epochs"][0]
    for key in ("config", "final_test_accuracy", "memory_floats", "array_ops", "device_pulses",
                "max_pulses_per_device", "versions", "seed"):
        assert key in r
    assert r["memory_floats"][0] == 4 * (785 + 32) + 4  # k(N+M)+k with the default rank 4
    assert (tmp_path / "checkpoint.npz").is_file()


def test_resume_continues_exactly(tmp_path: Path) -> None:
    full = Trainer(small("training.epochs=2", 'training.method="streaming-pca"'), tmp_path / "full",
                   progress=False).run()
    part = tmp_path / "part"
    Trainer(small("training.epochs=1", 'training.method="streaming-pca"'), part, progress=False).run()
    # the same run, told it has two epochs, resumes from the epoch-1 checkpoint
    resumed = Trainer(small("training.epochs=2", 'training.method="streaming-pca"'), part, progress=False)
    res = resumed.run(resume=True)
    assert [e["test_accuracy"] for e in res["epochs"]] == [e["test_accuracy"] for e in full["epochs"]]
    assert [e["train_loss"] for e in res["epochs"]] == [e["train_loss"] for e in full["epochs"]]
    assert res["device_pulses"] == full["device_pulses"]


@pytest.mark.parametrize("method, mode", [("mbgd", "rank-sum"), ("streaming-pca", "rank-seq")])
def test_no_stochastic_rounding_shows_vanishing_updates(method: str, mode: str) -> None:
    kw = (f'training.method="{method}"', f'training.mode="{mode}"', "device.sigma_c2c=0")
    on = Trainer(small("training.stochastic_rounding=true", *kw), None, progress=False).run()
    off = Trainer(small("training.stochastic_rounding=false", *kw), None, progress=False).run()
    assert off["device_pulses"] < 0.5 * on["device_pulses"]
    assert on["final_test_accuracy"] > off["final_test_accuracy"] + 0.05


def test_lr_decay_scales_every_update_of_epoch_e_by_decay_to_the_e(mocker) -> None:
    cfg = load_config(None, [*SMALL[:2], "training.limit_train=128", "training.epochs=3", "logging.progress=false",
                             "training.learning_rate=0.4", "training.lr_decay=0.5", "training.batch_size=64"])
    tr = Trainer(cfg, None, progress=False)
    spy = mocker.spy(tr.controller, "apply_update")
    tr.run()
    lrs = [c.args[2] for c in spy.call_args_list]
    assert lrs == [0.4] * 4 + [0.2] * 4 + [0.1] * 4  # 2 batches x 2 layers per epoch


def test_lr_decay_out_of_range_is_refused_naming_the_key() -> None:
    from crossbar_ctl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[training\]\.lr_decay"):
        load_config(None, ["training.lr_decay=1.5"])


def test_bench_train_warms_every_case_up_before_measuring(mocker) -> None:
    from crossbar_ctl.training import bench

    one = mocker.patch.object(bench, "_one", return_value=1.0)
    mocker.patch.object(bench, "float_samples_per_s", return_value=2.0)
    out = bench.bench_train(quick=True)
    calls = [c.args for c in one.call_args_list]
    assert calls[: len(bench.CASES)] == [(*case, 32, 64) for case in bench.CASES]
    measured = calls[len(bench.CASES):]
    assert [(m, mode, r, b) for m, mode, r, b, _ in measured[: 2 * len(bench.CASES)]] == [
        (*case, b) for b in (64, 1024) for case in bench.CASES]
    assert all(r["ratio_to_float"] == 0.5 for r in out["results"])
