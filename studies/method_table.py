"""The method x rank x mode table of issue 3 (README "Results"): runs every point, writes CSV and markdown.

Usage:  python studies/method_table.py OUT_DIR [--epochs 10] [--seeds 0] [--jobs 2] [--devices agsi,ideal]
Each point is an ordinary `crossbar-ctl train` run (its own run directory with results.json); points whose
results.json is complete are skipped, so the script resumes after an interruption.
"""
from __future__ import annotations

import argparse
import csv
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RANKS = (1, 2, 3, 5, 10)


def points(devices: list[str], seeds: list[int], methods: list[str], extra: list[str], ranks: tuple[int, ...] = RANKS,
           modes: tuple[str, ...] = ("rank-seq", "rank-sum")) -> list[tuple[str, list[str]]]:
    out = []
    for dev in devices:
        for seed in seeds:
            base = [f'device.preset="{dev}"', f"seed={seed}", *extra]
            if "mbgd" in methods:
                out.append((f"{dev}/mbgd/s{seed}", base + ['training.method="mbgd"', 'training.mode="rank-sum"']))
            for method in [m for m in methods if m != "mbgd"]:
                for mode in modes:
                    for k in ranks:
                        out.append((f"{dev}/{method}-{mode}-k{k}/s{seed}",
                                    base + [f'training.method="{method}"', f'training.mode="{mode}"', f"training.rank={k}"]))
    return out


def run_point(args: tuple[str, list[str], str]) -> str:
    name, overrides, out_dir = args
    from crossbar_ctl.config import load_config
    from crossbar_ctl.training.trainer import Trainer

    out = Path(out_dir) / name
    res = out / "results.json"
    if res.is_file() and json.loads(res.read_text()).get("complete"):
        return f"skip {name}"
    Trainer(load_config(None, overrides), out, progress=False).run()
    return f"done {name}"


def collect(out_dir: Path) -> list[dict]:
    rows = []
    for res in sorted(out_dir.glob("**/results.json")):
        r = json.loads(res.read_text())
        if not r.get("complete"):
            continue
        t = r["config"]["training"]
        rows.append({
            "device": r["config"]["device"].get("preset") or r["config"]["device"]["model"],
            "method": t["method"], "mode": t["mode"] if t["method"] not in ("mbgd",) else "rank-sum",
            "rank": t["rank"] if t["method"] not in ("mbgd",) else "", "passes": t.get("passes", 1),
            "seed": r["seed"], "test_accuracy": r["final_test_accuracy"],
            "memory_floats_layer1": r["memory_floats"][0], "device_pulses": r["device_pulses"],
            "array_ops": r["array_ops"], "max_pulses_per_device": r["max_pulses_per_device"],
        })
    return rows


def markdown(rows: list[dict]) -> str:
    """One line per (device, method, mode, rank, passes): accuracy mean ± std over seeds, memory, pulses."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["device"], r["method"], r["mode"], r["rank"], r["passes"]), []).append(r)
    out = ["| device | method | mode | k | passes | test accuracy % | seeds | memory (floats, 785×100 layer) "
           "| training device pulses |", "|---|---|---|---|---|---|---|---|---|"]
    order = {"mbgd": 0, "streaming-pca": 1, "nmf": 2, "svd": 3}
    for key in sorted(groups, key=lambda k: (k[0], order.get(k[1], 9), k[2], int(k[3] or 0), k[4])):
        g = groups[key]
        acc = [100 * r["test_accuracy"] for r in g]
        sd = f" ± {statistics.stdev(acc):.1f}" if len(acc) > 1 else ""
        pulses = statistics.mean(float(r["device_pulses"]) for r in g)
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {statistics.mean(acc):.1f}{sd} "
                   f"| {len(g)} | {g[0]['memory_floats_layer1']:,} | {pulses:,.0f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--devices", default="agsi,ideal")
    ap.add_argument("--methods", default="mbgd,streaming-pca,nmf")
    ap.add_argument("--ranks", default=",".join(map(str, RANKS)))
    ap.add_argument("--modes", default="rank-seq,rank-sum")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--report-only", action="store_true", help="only rebuild table.csv/table.md from OUT_DIR")
    a = ap.parse_args()
    extra = [f"training.epochs={a.epochs}", "logging.progress=false", *a.set]
    pts = points(a.devices.split(","), [int(s) for s in a.seeds.split(",")], a.methods.split(","), extra,
                 tuple(int(k) for k in a.ranks.split(",")), tuple(a.modes.split(",")))
    if not a.report_only:
        with ProcessPoolExecutor(a.jobs) as pool:
            for msg in pool.map(run_point, [(n, o, str(a.out)) for n, o in pts]):
                print(msg, flush=True)
    rows = collect(a.out)
    with open(a.out / "table.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (a.out / "table.md").write_text(markdown(rows))
    print(f"{len(rows)} points -> {a.out / 'table.csv'}, {a.out / 'table.md'}")


if __name__ == "__main__":
    main()
