"""Sweeps: a tiny sweep through a real 2-worker LocalCluster (a transient failure, a killed and a lost point),
rerun through the CLI, resume, refusal, report."""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from crossbar_ctl.config import config_to_dict
from crossbar_ctl.errors import ConfigError
from crossbar_ctl.sweeps import runner
from crossbar_ctl.sweeps.cli import add_sweep_parsers
from crossbar_ctl.sweeps.report import make_report
from crossbar_ctl.sweeps.runner import is_complete, run_sweep
from crossbar_ctl.sweeps.spec import expand_points, load_sweep

BASE = """
[base]
training.limit_train = 200
training.limit_test = 100
training.hidden = [8]
training.epochs = 1
training.rank = 2
array.rows = [785, 9]
array.cols = [16, 20]
"""
TINY = 'name = "t"\nseeds = [0, 1]\nfloat_ceiling = 0.9\n' + BASE + """
[axes]
"training.method" = ["mbgd", "nmf", "streaming-pca"]
"""
FLAKY = "method-nmf_seed-1"  # fails on its first attempt only: its results file cannot be written
KILLED = "method-mbgd_seed-1"  # left with the complete = false results.json of a run killed after an epoch
LOST = "method-mbgd_seed-0"  # its results.json deleted


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the tiny sweep on a 2-worker LocalCluster, spoil three points, rerun it with `crossbar-ctl sweep`."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep_file = write(tmp / "tiny.toml", TINY)
    spec = load_sweep(sweep_file)
    points = expand_points(spec)
    out = tmp / "out"
    blocker = out / FLAKY / "results.json.tmp"  # a directory where the trainer writes its results: OSError
    blocker.mkdir(parents=True)
    first = run_sweep(spec, points, out, workers=2, progress=False, echo=lambda s: None)
    blocker.rmdir()  # the transient cause is gone
    error = json.loads((out / FLAKY / "error.json").read_text())
    killed = json.loads((out / KILLED / "results.json").read_text())
    write(out / KILLED / "results.json", json.dumps({**killed, "complete": False}))
    (out / LOST / "results.json").unlink()
    kept = {p.name: ((out / p.name / "results.json").stat().st_mtime_ns, (out / p.name / "results.json").read_bytes())
            for p in points if p.name not in (FLAKY, KILLED, LOST)}
    rerun = subprocess.run([sys.executable, "-m", "crossbar_ctl.cli", "sweep", str(sweep_file), "--out", str(out),
                            "--workers", "2"], capture_output=True, text=True, timeout=300, cwd=tmp)
    return {"out": out, "points": points, "first": first, "error": error, "kept": kept, "rerun": rerun}


def test_failed_point_recorded_and_sweep_goes_on(swept: dict) -> None:
    first = swept["first"]
    assert first.failed == [FLAKY]
    assert sorted(first.done) == sorted(p.name for p in swept["points"] if p.name != FLAKY) and not first.skipped
    err = swept["error"]
    assert err["point"] == FLAKY and err["error_type"] == "IsADirectoryError" and "results.json.tmp" in err["error"]
    assert "Traceback" in err["traceback"] and err["overrides"] == {"training.method": "nmf"}


def test_rerun_completes_every_point_exactly_once(swept: dict) -> None:
    out, points, rerun = swept["out"], swept["points"], swept["rerun"]
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "3 of 6 points already complete: skipped" in rerun.stdout
    assert "sweep: 3 done, 3 skipped (already complete), 0 failed" in rerun.stdout
    assert sorted(d.name for d in out.iterdir() if d.is_dir()) == sorted(p.name for p in points)
    for p in points:
        assert is_complete(p, out / p.name), p.name
        assert not (out / p.name / "error.json").exists(), p.name  # the flaky point's error is cleared
    for name, (mtime, content) in swept["kept"].items():  # complete before the rerun: not run again
        path = out / name / "results.json"
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content
    flaky = json.loads((out / FLAKY / "results.json").read_text())
    assert flaky["complete"] and flaky["seed"] == 1 and 0.0 <= flaky["final_test_accuracy"] <= 1.0


def test_rerun_prints_progress_and_dashboard_and_no_dask_logs(swept: dict) -> None:
    rerun = swept["rerun"]
    assert "running 3 point(s) on a local cluster of 2 worker process(es); dashboard: http://" in rerun.stdout
    assert "points: 100%" in rerun.stderr and "3/3" in rerun.stderr
    assert "INFO" not in rerun.stderr and "Traceback" not in rerun.stderr and "CommClosed" not in rerun.stderr


def test_is_complete_needs_complete_flag_and_this_points_config(tmp_path: Path) -> None:
    spec = load_sweep(write(tmp_path / "s.toml", TINY))
    p, other = expand_points(spec)[:2]
    run_dir = tmp_path / p.name
    assert not is_complete(p, run_dir)  # missing
    run_dir.mkdir()
    res = {"complete": True, "config": json.loads(json.dumps(config_to_dict(p.config)))}
    for text, want in ((json.dumps(res), True),
                       (json.dumps({**res, "complete": False}), False),  # killed after an epoch
                       (json.dumps({"complete": True}), False),  # no config
                       (json.dumps({k: v for k, v in res.items() if k != "complete"}), False),
                       (json.dumps(res)[:-5], False)):  # cut short
        write(run_dir / "results.json", text)
        assert is_complete(p, run_dir) is want, text[:60]
    assert not is_complete(other, run_dir)  # another point's results


def test_report_summary_matches_results(swept: dict) -> None:
    out = swept["out"]
    written = make_report(out)
    rows = {r["point"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert sorted(rows) == ["method-mbgd", "method-nmf", "method-streaming-pca"]
    for group in rows:
        res = [json.loads((out / f"{group}_seed-{s}" / "results.json").read_text()) for s in (0, 1)]
        row = rows[group]
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1"
        for col, vals in (("final_test_accuracy", [r["final_test_accuracy"] for r in res]),
                          ("memory_floats_layer1", [r["memory_floats"][0] for r in res]),
                          ("device_pulses", [r["device_pulses"] for r in res]),
                          ("array_ops", [r["array_ops"] for r in res])):
            assert float(row[f"{col}_mean"]) == pytest.approx(statistics.mean(vals))
            assert float(row[f"{col}_std"]) == pytest.approx(statistics.stdev(vals), abs=1e-12)
    assert rows["method-nmf"]["rank"] == "2" and rows["method-mbgd"]["rank"] == ""
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) == 4
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_instrument_backend_refused_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = TINY.replace('"training.method" = ["mbgd", "nmf", "streaming-pca"]', '"backend.kind" = ["sim", "visa"]')
    spec = load_sweep(write(tmp_path / "hw.toml", text))
    points = expand_points(spec)

    def no_cluster(*a: object, **k: object) -> None:
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(runner, "open_client", no_cluster)
    with pytest.raises(ConfigError, match="one array cannot run two points at once") as info:
        run_sweep(spec, points, tmp_path / "out", workers=2, progress=False)
    assert "kind-visa" in str(info.value) and "'visa'" in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, words", [
    ('seeds = [0]\nepochs = 3\n', ["bad.toml", "epochs", "unknown key"]),
    ('[axes]\n"training.rank" = {start = 1, stop = 3, stpe = 1}\n', ["bad.toml", "stpe", "unknown key"]),
    ('[axes]\nseed = [0, 1]\n', ["bad.toml", "axes", "seeds"]),
    ('[axes]\n"trainin.rank" = [1]\n', ["bad.toml", "trainin.rank"]),
    ('[axes]\n"training.rank" = []\n', ["bad.toml", "training.rank", "no values"]),
])
def test_sweep_file_errors_name_file_and_key(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_sweep(write(tmp_path / "bad.toml", text))
    for word in words:
        assert word in str(info.value)


def test_point_config_errors_name_point_and_key(tmp_path: Path) -> None:
    spec = load_sweep(write(tmp_path / "s.toml", BASE + '[axes]\n"training.rnak" = [1]\n'))
    with pytest.raises(ConfigError, match=r"(?s)s\.toml \(point rnak-1_seed-0\).*\[training\]\.rnak"):
        expand_points(spec)
    spec = load_sweep(write(tmp_path / "e.toml", BASE + '[axes]\n"training.rank" = [1]\n[[exclude]]\n'
                            '"training.mode" = "rank-seq"\n'))
    with pytest.raises(ConfigError, match=r"exclude\[0\]\.training\.mode: not an axis"):
        expand_points(spec)


def test_expansion_ranges_exclude_include_dedupe_and_base_file(tmp_path: Path) -> None:
    write(tmp_path / "run.toml", "[training]\nepochs = 7\nhidden = [8]\n")
    spec = load_sweep(write(tmp_path / "s.toml", """
base_file = "run.toml"
seeds = {start = 0, stop = 2}
[base]
training.epochs = 2
[axes]
training.method = ["streaming-pca", "nmf"]
training.mode = ["rank-seq", "rank-sum"]
training.rank = {start = 1, stop = 6, step = 2}
[[exclude]]
"training.method" = "nmf"
"training.rank" = [3, 5]
[[include]]
"training.method" = "mbgd"
[[include]]
"training.method" = "mbgd"
"""))
    points = expand_points(spec)
    groups = sorted({p.group for p in points})
    assert len(groups) == 2 * 3 + 2 * 1 + 1 and "method-mbgd" in groups
    assert "method-nmf_mode-rank-sum_rank-1" in groups and "method-nmf_mode-rank-sum_rank-3" not in groups
    assert len(points) == 2 * len(groups) and {p.seed for p in points} == {0, 1}
    p = points[0]
    assert p.config.training.epochs == 2 and p.config.training.hidden == [8] and p.config.seed == 0
    assert [q.name for q in expand_points(spec)] == [q.name for q in points]  # deterministic


def test_cli_parsers(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_sweep_parsers(parser.add_subparsers(dest="command"))
    a = parser.parse_args(["sweep", "s.toml", "--out", str(tmp_path), "--workers", "3"])
    assert a.workers == 3 and a.scheduler is None
    assert parser.parse_args(["sweep", "s.toml", "--out", "x"]).workers is None and a.func.__name__ == "cmd_sweep"
    a = parser.parse_args(["report", str(tmp_path), "--float-ceiling", "0.93"])
    assert a.float_ceiling == 0.93 and a.func.__name__ == "cmd_report"
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "s.toml", "--out", "x", "--workers", "2", "--scheduler", "tcp://h:1"])


def test_sweep_runs_on_an_existing_scheduler_and_leaves_it_running(tmp_path: Path) -> None:
    """--scheduler ADDRESS: the points run on that cluster's workers, results land in the sweep directory, and
    the cluster (not the sweep's to close) is still serving afterwards."""
    import logging

    from dask.distributed import Client, LocalCluster

    spec = load_sweep(write(tmp_path / "s.toml", 'name = "s"\nseeds = [0]\n' + BASE + '\n[axes]\n"training.method" = ["mbgd"]\n'))
    points = expand_points(spec)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, env=dict(runner.WORKER_ENV),
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        summary = run_sweep(spec, points, tmp_path / "out", scheduler=cluster.scheduler_address, progress=False,
                            echo=lambda s: None)
        assert summary.done == [p.name for p in points] and not summary.failed
        res = json.loads((tmp_path / "out" / points[0].name / "results.json").read_text())
        assert res["complete"] and 0.0 <= res["final_test_accuracy"] <= 1.0
        with Client(cluster.scheduler_address) as c:  # still there
            assert len(c.scheduler_info()["workers"]) == 1


def test_a_point_killed_part_way_continues_from_its_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """A 2-epoch point whose worker died in epoch 2 resumes from its epoch-1 checkpoint on the rerun and ends
    exactly where an uninterrupted run of it ends."""
    from crossbar_ctl.training.trainer import Trainer

    two = BASE.replace("training.epochs = 1", "training.epochs = 2")
    spec = load_sweep(write(tmp_path / "s.toml", 'name = "r"\nseeds = [0]\n' + two + '[axes]\n"training.method" = ["mbgd"]\n'))
    (p,) = expand_points(spec)
    ref = runner.run_point(p.name, p.data, p.overrides, str(tmp_path / "ref"))
    assert ref["status"] == "done" and ref["resumed"] is False
    real = Trainer._train_epoch

    def dies_in_epoch_2(self, epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt  # what a killed worker leaves: no error.json, results.json incomplete
        real(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", dies_in_epoch_2)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        runner.run_point(p.name, p.data, p.overrides, str(run))
    monkeypatch.setattr(Trainer, "_train_epoch", real)
    killed = json.loads((run / "results.json").read_text())
    assert killed["complete"] is False and len(killed["epochs"]) == 1
    assert runner.resumable(config_to_dict(p.config), run) and not is_complete(p, run)
    assert not runner.resumable(config_to_dict(expand_points(load_sweep(write(
        tmp_path / "t.toml", 'name = "r"\nseeds = [1]\n' + two + '[axes]\n"training.method" = ["mbgd"]\n')))[0].config), run)
    again = runner.run_point(p.name, p.data, p.overrides, str(run))
    assert again["status"] == "done" and again["resumed"] is True and is_complete(p, run)
    a, b = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "ref", run))
    assert [e["test_accuracy"] for e in b["epochs"]] == [e["test_accuracy"] for e in a["epochs"]]
    for key in ("final_test_accuracy", "device_pulses", "max_pulses_per_device"):
        assert b[key] == a[key], key
