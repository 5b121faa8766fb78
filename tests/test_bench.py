"""scripts/bench.py on the tiny data: the sweep mode (behind the parallel-sweep target) and the eval mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_mode_times_a_multirun_side_by_side_and_one_at_a_time(tmp_path: Path, data_root: Path):
    sweep = "model=mlp optimizer.lr=1e-3,3e-3 dataset=mnist epochs=1 batch_size=32"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--root", str(data_root), "--sweep",
                           sweep, "--repeats", "1", "--json", "sweep.json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rounds = json.loads((tmp_path / "sweep.json").read_text())["rounds"]
    assert len(rounds) == 1 and rounds[0]["first"] == "one at a time"
    cases = ("one at a time", "side by side", "1 thread alone")
    walls = {case: rounds[0][case]["wall_s"] for case in cases}
    assert rounds[0]["ratio"] == walls["side by side"] / walls["one at a time"]
    jobs = {case: rounds[0][case]["jobs_s"] for case in cases}
    for case in cases:  # each job ran, once, in each case
        assert sorted(jobs[case]) == ["optimizer.lr=0.001", "optimizer.lr=0.003"]
    assert rounds[0]["floor"] == pytest.approx(sum(jobs["1 thread alone"].values()) /
                                               (len(os.sched_getaffinity(0)) * sum(jobs["one at a time"].values())))
    assert (f"| 1 | one at a time | {walls['one at a time']:.1f} | {walls['side by side']:.1f} | "
            f"{walls['1 thread alone']:.1f} | {rounds[0]['ratio']:.2f} | {rounds[0]['floor']:.2f} |") in proc.stdout
    assert "median" in proc.stdout and "usable cores" in proc.stdout
    last_lines = proc.stdout.rstrip().splitlines()[-3:]
    for alone, line in zip(("one at a time", "1 thread alone"), (last_lines[0], last_lines[2]), strict=True):
        kept = median(jobs[alone][job] / jobs["side by side"][job] for job in jobs[alone])
        assert f"of its speed {alone} " in line and line.endswith(f"): all {kept:.2f}")  # no model= swept: one group


def test_eval_mode_measures_each_eval_batch_size_and_marks_the_default(tmp_path: Path, data_root: Path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--root", str(data_root), "--eval",
                           "256,32", "--pairs", "mlp:mnist", "--repeats", "1", "--json", "eval.json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((tmp_path / "eval.json").read_text())["eval"]
    assert [(r["eval_batch_size"], r["default"]) for r in rows] == [(256, True), (32, False)]
    assert all(r["images_per_s"] > 0 and len(r["runs"]) == 1 for r in rows)
    assert f"| mlp:mnist | 256 * | {rows[0]['images_per_s']:,.0f} |" in proc.stdout
