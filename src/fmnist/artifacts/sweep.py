"""Sweep results people can read: one row per job, sorted by validation accuracy, and one plot.

Works on any sweep directory, finished or not: each job directory holds Hydra's `.hydra/overrides.yaml`
and the `metrics.json` that training rewrites every epoch (with `status` and, on failure, `error`).
Hydra calls `cli.callbacks.SummaryCallback` after each job and when a `--multirun` ends;
`scripts/summarize_sweep.py` does the same by hand. Also here: the policy for one job of a sweep (a failed
job is recorded and the others go on) and how many jobs share the CPU.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from fmnist import __version__
from fmnist.artifacts.atomic import taking_turns, write_atomically
from fmnist.artifacts.html import sweep_page
from fmnist.artifacts.rundir import BEST, REPORT, RunDir, RunDirectoryInUse, latest_checkpoint, read_metrics
from fmnist.artifacts.tracking import MLFLOW_SWEEP_MEMO
from fmnist.config import usable_cores
from fmnist.errors import Interrupted, UserError

log = logging.getLogger("fmnist")

COLUMNS = ("job", "status", "swept", "best_val_acc", "test_acc", "epochs", "seconds", "error", "overrides")


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job directory under sweep_dir, best validation accuracy first, failures last.

    A job's status is what its metrics.json says, except that a "running" job whose process is gone
    crashed (killed, out of memory), and an unreadable metrics.json is reported as such.
    """
    rows = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        overrides = _read_overrides(overrides_file)
        metrics, problem = read_metrics(job_dir)
        history = [r for r in metrics.get("history", []) if _is_epoch_row(r)] if not problem else []
        status = "unreadable" if problem else metrics.get("status", "not started" if not metrics else "running")
        error = problem or str(metrics.get("error", "") or "")
        if status == "running" and not _alive(metrics.get("pid"), metrics.get("host")):
            status, error = "crashed", error or "the job's process ended without recording a result"
        best = metrics.get("best_val_acc") if history else None
        test = metrics.get("test")
        rows.append({
            "job": job_dir.name,
            "status": str(status),
            "overrides": " ".join(overrides),
            "best_val_acc": best if isinstance(best, int | float) else None,
            "test_acc": _number(test.get("accuracy")) if isinstance(test, dict) else None,
            "epochs": len(history),
            "seconds": _number(metrics.get("seconds")),
            "error": error,
            "history": history,
            "params": dict(o.split("=", 1) for o in overrides if "=" in o),
        })
    common = common_overrides(rows)
    for r in rows:
        r["swept"] = " ".join(o for o in r["overrides"].split() if o not in common) or r["overrides"]
    rows.sort(key=lambda r: (r["status"] in FAILED, -(r["best_val_acc"] or -1.0), _job_number(r["job"])))
    return rows


def common_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """The overrides every job of the sweep shares (epochs=1 dataset.root=...): said once, not on every row.
    With one job, none: its overrides are what tells it apart."""
    if len(rows) < 2:
        return []
    first = rows[0]["overrides"].split()
    return [o for o in first if all(o in r["overrides"].split() for r in rows[1:])]


FAILED = ("failed", "crashed", "interrupted", "unreadable")
SWEEP_PNG, SUMMARY_CSV, SUMMARY_MD = "sweep.png", "sweep_summary.csv", "sweep_summary.md"
SUMMARY_LOCK = ".summary.lock"  # jobs ending together write the summary one after the other
SUMMARY_STAMP = ".summary.sha256"  # what the summary files on disk were written from (_stamp)


def _read_overrides(path: Path) -> list[str]:
    try:
        overrides = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError):
        return ["(unreadable overrides.yaml)"]
    return [str(o) for o in overrides] if isinstance(overrides, list) else ["(unreadable overrides.yaml)"]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _is_epoch_row(row: Any) -> bool:
    return isinstance(row, dict) and all(_number(row.get(k)) is not None for k in ("epoch", "val_acc"))


def _alive(pid: Any, host: Any) -> bool:
    """Whether the process that wrote a "running" status still exists (unknown, or another host's: assume so)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """sweep_summary.csv, sweep_summary.md, sweep.png and the sweep's page in sweep_dir; returns the rows.

    Jobs that end together take turns, so the files always come from one writer's rows, and the last writer
    has seen every job that ended before it. Files already written from the same rows are left as they are:
    the sweep's own call at its end follows its last job's, and in a parallel sweep it would import
    matplotlib (~1 s) only to draw the same chart again.
    """
    with taking_turns(sweep_dir / SUMMARY_LOCK):
        rows = collect(sweep_dir)
        stamp = _stamp(rows)
        if not _written_from(sweep_dir, stamp, rows):
            _write(sweep_dir, rows)
            write_atomically(sweep_dir / SUMMARY_STAMP, lambda tmp: tmp.write_text(stamp))
    return rows


def refresh_after_rerun(run_dir: Path) -> None:
    """A sweep's job run again on its own (the resume command a stopped job prints, or more epochs): its row in
    the sweep's summary follows. Hydra's multirun.yaml marks the folder above as a sweep's."""
    if (run_dir.parent / "multirun.yaml").is_file():
        try:
            write_summary(run_dir.parent)
        except UserError as exc:  # the run itself is done and saved: this is no reason to fail it
            log.warning("the sweep summary was not updated: %s", exc)
        else:
            log.info("sweep summary: %s", run_dir.parent / SUMMARY_MD)


def _stamp(rows: list[dict[str, Any]]) -> str:
    """What the summary files are a function of: the rows, the version the page names, and the code that
    renders them."""
    text = json.dumps([__version__, _renderer_digest(), rows], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@cache
def _renderer_digest() -> str:
    """The files that draw the summary, hashed: an upgrade, or an edit in a source checkout whose version did
    not move, draws it again (scripts/summarize_sweep.py said "up to date" over a table the code now writes
    otherwise)."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for path in (here / "sweep.py", here / "plots.py", here / "html.py", *sorted((here / "templates").iterdir())):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _written_from(sweep_dir: Path, stamp: str, rows: list[dict[str, Any]]) -> bool:
    names = (SUMMARY_CSV, SUMMARY_MD, REPORT, *((SWEEP_PNG,) if rows else ()))
    try:
        return (sweep_dir / SUMMARY_STAMP).read_text() == stamp and all((sweep_dir / n).is_file() for n in names)
    except (OSError, UnicodeDecodeError):
        return False


def _write(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    common = common_overrides(rows)
    shown = [{**r, "swept": readable(r["swept"])} for r in rows]
    write_atomically(sweep_dir / SUMMARY_CSV, lambda tmp: tmp.write_text(table.getvalue()))
    write_atomically(sweep_dir / SUMMARY_MD, lambda tmp: tmp.write_text(_markdown(shown, common)))
    if rows:
        from fmnist.artifacts.plots import plot_sweep  # matplotlib: only when drawing

        plot_sweep(shown, swept_numeric_parameter(rows), sweep_dir / SWEEP_PNG)
    page = sweep_page(shown, sweep_dir, common=common, failed=sum(r["status"] in FAILED for r in rows),
                      plot=sweep_dir / SWEEP_PNG)
    write_atomically(sweep_dir / REPORT, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def close_trackers(sweep_dir: Path, failed: bool) -> None:
    """End the sweep's parent run in MLflow (logger=mlflow made one), with the sweep's page attached. A
    tracker's failure here is one warning: the sweep's own files are written already."""
    if not (sweep_dir / MLFLOW_SWEEP_MEMO).is_file():
        return
    try:
        from fmnist.artifacts.mlflow_tracker import close_sweep

        close_sweep(sweep_dir, failed, [sweep_dir / name for name in (REPORT, SUMMARY_CSV, SWEEP_PNG)])
    except Exception as exc:  # noqa: BLE001 - a tracker never fails the sweep
        log.warning("logger mlflow: could not close the sweep's parent run (%s: %s)", type(exc).__name__, exc)


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


def _markdown(rows: list[dict[str, Any]], common: list[str]) -> str:
    lines = [f"Overrides of every job: `{' '.join(common)}`\n"] if common else []
    lines += ["| job | status | swept | best val acc | test acc | epochs | seconds | error |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['job']} | {r['status']} | `{r['swept']}` | {_pct(r['best_val_acc'])} | "
                     f"{_pct(r['test_acc'])} | {r['epochs']} | {_num(r['seconds'])} | {r['error'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


_HYDRA_WORDS = {"True": "true", "False": "false", "None": "null"}


def readable(overrides: str) -> str:
    """Overrides with a sampler's long floats to four significant digits (optimizer.lr=0.0005611516415334506 ->
    0.0005612), and Hydra's record of true, false and null (in Python's words: progress=False) as typed, where a
    person reads them; the CSV and each job's .hydra/overrides.yaml keep them exact."""
    def short(override: str) -> str:
        key, _, value = override.partition("=")
        if value in _HYDRA_WORDS:
            return f"{key}={_HYDRA_WORDS[value]}"
        try:
            number = float(value)
        except ValueError:
            return override
        text = re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", f"{number:.4g}")  # 1e+12 -> 1e12, 1e-05 -> 1e-5
        return f"{key}={text}" if any(c in value for c in ".eE") and len(text) < len(value) else override
    return " ".join(short(o) for o in overrides.split())


def _pct(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _job_number(name: str) -> int:
    return int(name) if name.isdigit() else 0


def report(sweep_dir: Path, again: Callable[[], str] = str) -> int:
    """Write the summary and log it (the best jobs, then every failure, then `again()`, the command that
    finishes the sweep, where a job was stopped or never started); returns the number of failed jobs."""
    rows = write_summary(sweep_dir)
    failed = [r for r in rows if r["status"] in FAILED]
    log.info("sweep summary: %s (%d job%s, %d failed)", sweep_dir / SUMMARY_MD, len(rows), "s" * (len(rows) != 1),
             len(failed))
    for r in rows[:5]:
        if r["status"] in FAILED:
            continue
        if r["best_val_acc"] is None:  # not started, or running with no epoch done
            log.info("  job %s  %s  %s", r["job"], r["status"], readable(r["swept"]))
        else:
            log.info("  job %s  val %s  test %s  %s", r["job"], _pct(r["best_val_acc"]), _pct(r["test_acc"]),
                     readable(r["swept"]))
    for r in failed:
        log.info("  job %s %s: %s  (%s)", r["job"], r["status"].upper(), r["error"], readable(r["swept"]))
    if any(r["status"] in ("interrupted", "not started") for r in rows) and (command := again()):
        say_how_to_finish(command)
    return len(failed)


def say_how_to_finish(again: str) -> None:
    log.info("to finish the sweep (stopped jobs resume, the others start): %s", again)


def default_checkpoint() -> Path:
    """What fmnist-eval and fmnist-predict use without ckpt=: the latest run's best.pt, or when the latest
    run was a job of a sweep, the best job's (highest validation accuracy) of that sweep."""
    latest = latest_checkpoint()
    if (best := best_job_checkpoint(latest.parent.parent, "no ckpt= given: the best job of the latest sweep")):
        return best
    log.info("no ckpt= given: the latest run's %s", latest)
    return latest


def best_job_checkpoint(folder: Path, announce: str = "") -> Path | None:
    """best.pt of the best completed job (highest validation accuracy) of the sweep in `folder`; None where
    `folder` holds no sweep or no job of it completed. `announce`: the log line's start that says which."""
    if not any((folder / name).is_file() for name in SWEEP_MARKERS):
        return None
    done = [r for r in collect(folder) if r["status"] == "completed" and (folder / r["job"] / BEST).is_file()]
    if not done:
        return None
    best = done[0]
    if announce:
        log.info("%s, %s (job %s, val %s, %s)", announce, folder / best["job"] / BEST, best["job"],
                 _pct(best["best_val_acc"]), readable(best["swept"]))
    return folder / best["job"] / BEST


SWEEP_MARKERS = ("multirun.yaml", SUMMARY_CSV)  # Hydra's record of a sweep, and ours


# ---- one job of a sweep ----------------------------------------------------------------------------------


def run_job(train: Callable[[], float], out_dir: Path, sweep_dir: Path, job: int, sweeper_target: str,
            pooled: bool = False, again: Callable[[], str] = str) -> float:
    """Run one job so that a failure does not stop the sweep: record why it failed, then tell the sweeper
    in the way it understands. Ctrl-C stops the whole sweep: the summary of what finished is written first,
    and the command that finishes the sweep (`again()`) is said.

    `pooled`: the job runs in a worker process of a parallel sweep, which the sweep's own process stops
    (ParallelStop): an interrupted job returns so that the sweep collects its neighbours before it ends, and
    a job that starts after the stop is skipped ("not started").
    """
    if pooled and stop_file(sweep_dir).exists():
        log.warning("job %s not started: the sweep was stopped", job)
        stopped = signal_in(stop_file(sweep_dir))
        return _failed_job(sweeper_target, Interrupted("the sweep was stopped before this job started", stopped))
    try:
        return train()
    except Interrupted as exc:
        print(f"fmnist-train: {exc}", file=sys.stderr)
        write_summary(sweep_dir)
        if pooled:  # the sweep's own process reports it when its jobs are collected
            return _failed_job(sweeper_target, exc)
        if command := again():
            say_how_to_finish(command)
        raise SystemExit(exc.exit_code) from None
    except UserError as exc:
        message, error = str(exc), exc
        # A failure before the run claimed its directory (a bad value) is recorded here; once claimed,
        # run_training has recorded it. Never write into a directory that holds or is claimed by another run.
        if not isinstance(exc, RunDirectoryInUse) and not RunDir(out_dir).existing_run():
            RunDir(out_dir).record_status("failed", message)
    except Exception as exc:  # a bug: keep the traceback in the job's log, still record and go on
        log.exception("job failed")
        message, error = f"{type(exc).__name__}: {exc}", exc
        RunDir(out_dir).record_status("failed", message)
    log.error("job %s failed: %s", job, message)
    return _failed_job(sweeper_target, error)


def leave_ctrl_c_to_the_sweep() -> None:
    """In a worker process of a parallel sweep: ignore SIGINT outside training (training's StopRequest still
    takes it). Ctrl-C in a terminal reaches every process of the sweep, and a worker that is idle or
    starting a job would die of it, taking the sweep down with a traceback; the sweep's own process tells
    the jobs through the stop file instead (train/interrupt.py ParallelStop), which also starts the workers
    with SIGINT ignored, for the seconds before their first job gets here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _failed_job(sweeper_target: str, error: Exception) -> float:
    if sweeper_wants_exceptions(sweeper_target):
        raise error
    return math.nan


def sweeper_wants_exceptions(sweeper_target: str) -> bool:
    """How a failed job is reported to the sweeper that runs it.

    Hydra's basic sweeper aborts the whole sweep when a job raises, so it gets NaN; the Optuna sweeper
    records a job that raised as a failed trial (and cannot digest NaN), so it gets the exception.
    """
    return "optuna" in sweeper_target.lower()


def parallel_jobs(launcher: Mapping[str, Any]) -> int:
    """How many jobs run side by side under the `hydra.launcher` config given: the joblib launcher's n_jobs
    (-1: one per core), else one."""
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n = int(launcher.get("n_jobs") or 1)
    return max(1, usable_cores() + 1 + n) if n < 0 else n  # joblib: -1 all cores, -2 all but one


# ---- the stop file: how a parallel sweep's process asks its jobs to stop (train/interrupt.py) ----------

def ask_to_stop(sweep_dir: Path, signum: int) -> None:
    """Write the stop file naming `signum` (OSError when it cannot be written)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    stop_file(sweep_dir).write_text(signal.Signals(signum).name, encoding="ascii")


def signal_in(stop_file: Path) -> int:
    """The signal a stop file names (SIGINT when it cannot be read: it still asks to stop)."""
    try:
        with stop_file.open(encoding="ascii", errors="replace") as f:
            return int(signal.Signals[f.read(16).strip()])
    except (OSError, KeyError, ValueError):
        return int(signal.SIGINT)


STOPPED = ".stopped"  # in the sweep directory: the signal that stopped it


def stop_file(sweep_dir: Path) -> Path:
    return sweep_dir / STOPPED
