"""scripts/bench.py on the tiny data: the sweep mode (behind the parallel-sweep target) and the eval mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_mode_times_a_multirun_side_by_side_and_one_at_a_time(tmp_path: Path, data_root: Path):
    sweep = "model=mlp optimizer.lr=1e-3,3e-3 dataset=mnist epochs=1 batch_size=32"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--root", str(data_root), "--sweep",
                           sweep, "--repeats", "1", "--json", "sweep.json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rounds = json.loads((tmp_path / "sweep.json").read_text())["rounds"]
    assert len(rounds) == 1 and rounds[0]["first"] == "one at a time"
    walls = {case: rounds[0][case]["wall_s"] for case in ("one at a time", "side by side")}
    assert rounds[0]["ratio"] == walls["side by side"] / walls["one at a time"]
    for case in walls:  # each job ran, once, in each case
        assert sorted(rounds[0][case]["jobs_s"]) == ["optimizer.lr=0.001", "optimizer.lr=0.003"]
    assert f"| 1 | one at a time | {walls['one at a time']:.1f} | {walls['side by side']:.1f} |" in proc.stdout
    assert "median" in proc.stdout and "usable cores" in proc.stdout
    kept = median(rounds[0]["one at a time"]["jobs_s"][job] / rounds[0]["side by side"]["jobs_s"][job]
                  for job in rounds[0]["one at a time"]["jobs_s"])
    assert proc.stdout.rstrip().endswith(f"): all {kept:.2f}")  # no model= swept: one group


def test_eval_mode_measures_each_eval_batch_size_and_marks_the_default(tmp_path: Path, data_root: Path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--root", str(data_root), "--eval",
                           "256,32", "--pairs", "mlp:mnist", "--repeats", "1", "--json", "eval.json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((tmp_path / "eval.json").read_text())["eval"]
    assert [(r["eval_batch_size"], r["default"]) for r in rows] == [(256, True), (32, False)]
    assert all(r["images_per_s"] > 0 and len(r["runs"]) == 1 for r in rows)
    assert f"| mlp:mnist | 256 * | {rows[0]['images_per_s']:,.0f} |" in proc.stdout
