"""Sweep results people can read: one row per job, sorted by validation accuracy, and one plot.

Works on any sweep directory, finished or not: each job directory holds Hydra's `.hydra/overrides.yaml`
and the `metrics.json` that training rewrites every epoch (with `status` and, on failure, `error`).
Hydra calls `SummaryCallback` when a `--multirun` ends; `scripts/summarize_sweep.py` does the same by hand.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from fmnist.atomic import write_atomically

log = logging.getLogger("fmnist")

COLUMNS = ("job", "status", "overrides", "best_val_acc", "test_acc", "epochs", "seconds", "error")


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job directory under sweep_dir, best validation accuracy first, failures last."""
    rows = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        metrics_file = job_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        history = metrics.get("history", [])
        status = metrics.get("status", "not started" if not metrics else "running")
        rows.append({
            "job": job_dir.name,
            "status": status,
            "overrides": " ".join(overrides),
            "best_val_acc": metrics.get("best_val_acc") if history else None,
            "test_acc": (metrics.get("test") or {}).get("accuracy"),
            "epochs": len(history),
            "seconds": metrics.get("seconds"),
            "error": metrics.get("error", ""),
            "history": history,
            "params": dict(o.split("=", 1) for o in overrides if "=" in o),
        })
    rows.sort(key=lambda r: (r["status"] == "failed", -(r["best_val_acc"] or -1.0), _job_number(r["job"])))
    return rows


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """sweep_summary.csv, sweep_summary.md and sweep.png in sweep_dir; returns the rows."""
    from fmnist.plots import plot_sweep

    rows = collect(sweep_dir)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    # Parallel jobs may finish at once: each file is replaced whole, never written half.
    write_atomically(sweep_dir / "sweep_summary.csv", lambda tmp: tmp.write_text(table.getvalue()))
    write_atomically(sweep_dir / "sweep_summary.md", lambda tmp: tmp.write_text(_markdown(rows)))
    if rows:
        write_atomically(sweep_dir / "sweep.png",
                         lambda tmp: plot_sweep(rows, swept_numeric_parameter(rows), tmp))
    return rows


def swept_numeric_parameter(rows: list[dict[str, Any]]) -> str | None:
    """The one override key that takes several numeric values across jobs, if there is exactly one swept key."""
    keys = {k for r in rows for k in r["params"]}
    varying = [k for k in sorted(keys) if len({r["params"].get(k) for r in rows}) > 1]
    if len(varying) != 1:
        return None
    try:
        [float(r["params"][varying[0]]) for r in rows]
    except (KeyError, ValueError):
        return None
    return varying[0]


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| job | status | overrides | best val acc | test acc | epochs | seconds | error |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['job']} | {r['status']} | `{r['overrides']}` | {_pct(r['best_val_acc'])} | "
                     f"{_pct(r['test_acc'])} | {r['epochs']} | {_num(r['seconds'])} | {r['error'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _job_number(name: str) -> int:
    return int(name) if name.isdigit() else 0


def sweeper_wants_exceptions(hydra_cfg: DictConfig) -> bool:
    """How a failed job is reported to the sweeper that runs it.

    Hydra's basic sweeper aborts the whole sweep when a job raises, so it gets NaN; the Optuna sweeper
    records a job that raised as a failed trial (and cannot digest NaN), so it gets the exception.
    """
    return "optuna" in str(hydra_cfg.sweeper.get("_target_", "")).lower()


class SummaryCallback(Callback):
    """Keeps the sweep summary current after every job, and reports it when the --multirun ends.

    Exits with code 1 at the end if any job failed, so scripts notice.
    """

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = write_summary(sweep_dir)
        failed = [r for r in rows if r["status"] == "failed"]
        log.info("sweep summary: %s (%d jobs, %d failed)", sweep_dir / "sweep_summary.md", len(rows), len(failed))
        for r in rows[:5]:
            if r["status"] != "failed":
                log.info("  job %s  val %s  test %s  %s", r["job"], _pct(r["best_val_acc"]), _pct(r["test_acc"]),
                         r["overrides"])
        for r in failed:
            log.info("  job %s FAILED: %s  (%s)", r["job"], r["error"], r["overrides"])
        if failed:
            sys.exit(1)
