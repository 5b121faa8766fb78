"""A run directory: the one place that knows its files, and the one writer of each.

    best.pt  last.pt            checkpoints (best validation accuracy; the latest state, to resume from)
    metrics.json  metrics.csv   per-epoch history, the run's status and summary, its test result
    curves.png  confusion_matrix.png  misclassified.png
    report.html                 one self-contained page: config, metrics, figures, status (also when it failed)
    tensorboard/  .mlflow_run.json   with logger=tensorboard / logger=mlflow
    eval-<split>/               fmnist-eval's eval.json, figures and report.html, by default (of last.pt:
                                eval-<split>-last/)
    predictions/                fmnist-predict's pictures, by default
    .fmnist.lock                held while a process trains here

A run directory that already holds a run is refused unless the user asked to resume it, so a repeated
`hydra.run.dir=...` cannot silently replace best.pt; while a run trains it holds an exclusive lock, so a
second process pointed at it is refused instead of interleaving its checkpoints with the first one's.
Everything is written through `atomic.write_atomically`: readers never see half a file. The trackers
(`logger=`, artifacts/tracking.py) hear from here too: each epoch as its metrics are written, the end of
the run as its report is.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmnist.artifacts.atomic import ensure_dir, write_atomically
from fmnist.artifacts.tracking import RunInfo, Trackers
from fmnist.errors import UserError
from fmnist.paths import user_path

if TYPE_CHECKING:  # torch only where checkpoints are written or read: fmnist-eval finds latest_checkpoint without it
    import torch

    from fmnist.artifacts.report import Mistakes

LAST, BEST = "last.pt", "best.pt"
METRICS_JSON, METRICS_CSV = "metrics.json", "metrics.csv"
CURVES, CONFUSION = "curves.png", "confusion_matrix.png"
EVAL_JSON, PER_CLASS, MISCLASSIFIED = "eval.json", "per_class.png", "misclassified.png"
PREDICTIONS = "predictions"
REPORT = "report.html"
LOCK_FILE = ".fmnist.lock"
RUN_FILES = (LAST, BEST, METRICS_JSON)  # any of them means the directory holds a run
HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "samples_per_s",
                  "warmup_s")
OUTPUT_DIRS = (Path("outputs"), Path("multirun"))  # where fmnist-train puts runs by default (conf/train.yaml)


log = logging.getLogger("fmnist")


def resume_source(setting: str | None, out_dir: Path) -> Path | None:
    """resume=auto: this run directory's last.pt if there is one; resume=latest: the last.pt written last
    under the output directories (./latest names a path); resume=PATH: a checkpoint or a run dir."""
    if not setting:
        return None
    if setting == "auto":
        candidate = out_dir / LAST
        return candidate if candidate.is_file() else None
    if setting == "latest":
        newest = _newest(tuple(user_path(d) for d in OUTPUT_DIRS), LAST)
        if newest is None:
            raise UserError(f"resume=latest: no run with a {LAST} under {_under(OUTPUT_DIRS)} here; give its "
                            f"directory, resume=RUN_DIR")
        return newest.absolute()
    path = user_path(setting)
    path = path / LAST if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"resume={setting}: there is no checkpoint at {path}")
    return path


class RunDirectoryInUse(UserError):
    """The directory belongs to another run: nothing may be recorded in it on this run's behalf."""


class RunDir:
    """One training run's directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last, self.best = path / LAST, path / BEST
        self.trackers = Trackers()
        self.info: RunInfo | None = None
        self._epochs_tracked = 0

    def existing_run(self) -> str | None:
        """The first file that shows this directory already holds a run, if any."""
        return next((name for name in RUN_FILES if (self.path / name).is_file()), None)

    @contextlib.contextmanager
    def claim(self, *, resuming: bool) -> Iterator[RunDir]:
        """Hold the directory for this process; refuse it if another process holds it, or if it holds a
        run that this one was not asked to resume."""
        ensure_dir(self.path)
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot use run directory {self.path}: {exc.strerror or exc}") from None
        try:
            self._lock(fd)
            self._refuse_a_run(resuming)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield self
        finally:
            os.close(fd)  # releases the lock

    def check_free(self, *, resuming: bool, setting: str = "hydra.run.dir") -> None:
        """claim's refusals, asked before anything is written into the directory (Hydra's log and `.hydra/`
        would land in another run's): creates nothing, and holds no lock after it returns. `setting`: the one
        that chose the directory, which the refusal says to change."""
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR)
        except OSError:  # no lock file: no run ever held the directory (or none that claim could use)
            fd = -1
        if fd >= 0:
            try:  # shared: the ranks of a distributed run all ask this at once, and none of them trains yet
                self._lock(fd, fcntl.LOCK_SH, setting)
            finally:
                os.close(fd)
        self._refuse_a_run(resuming, setting)

    def _lock(self, fd: int, kind: int = fcntl.LOCK_EX, setting: str = "hydra.run.dir") -> None:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RunDirectoryInUse(f"{self.path} is in use by another fmnist-train (pid {holder}): wait for "
                                    f"it to finish, or choose another {setting}") from None

    def _refuse_a_run(self, resuming: bool, setting: str = "hydra.run.dir") -> None:
        found = self.existing_run()
        if found and not resuming:
            raise RunDirectoryInUse(f"{self.path} already holds a run ({found}): continue it with "
                                    f"resume=auto, or choose another {setting}")

    def save_last(self, payload: dict[str, Any]) -> None:
        from fmnist.artifacts.checkpoint import save_checkpoint

        save_checkpoint(payload, self.last)

    def save_best(self, payload: dict[str, Any]) -> None:
        from fmnist.artifacts.checkpoint import save_checkpoint

        save_checkpoint(payload, self.best)

    def load_best(self, device: torch.device) -> dict[str, Any]:
        from fmnist.artifacts.checkpoint import load_checkpoint

        return load_checkpoint(self.best, map_location=device)

    def kept(self) -> str:
        """For an error message: what survives of the run."""
        return f"the last good checkpoint is {self.last}" if self.last.exists() else "no checkpoint was written yet"

    def track(self, info: RunInfo, trackers: Trackers, epochs_done: int) -> None:
        """From now on tell `trackers` what this run records (the epochs after `epochs_done`)."""
        self.info, self.trackers, self._epochs_tracked = info, trackers, epochs_done
        trackers.start(info)

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        self.trackers.log_step(step, scalars)

    def write_history(self, history: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        """metrics.csv (one row per epoch) and metrics.json (history plus the run's summary and test result)."""
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows({k: row.get(k) for k in HISTORY_FIELDS} for row in history)  # older runs lack warmup_s
        write_atomically(self.path / METRICS_CSV, lambda tmp: tmp.write_text(table.getvalue()))
        self._write_metrics({**summary, **written_by(), "history": history})
        for row in history[self._epochs_tracked:]:
            self.trackers.log_epoch(row)
        self._epochs_tracked = len(history)

    def finish(self, status: str) -> None:
        """The end of the run, however it ended: report.html from what the directory holds, then the
        trackers get the final metrics and the files. A completed run's report must be written (a full disk
        is an error); a failed or interrupted run's is best effort, its own error being the one to report."""
        from fmnist.artifacts.html import run_page

        metrics, _ = read_metrics(self.path)
        info = self.info
        history = metrics.get("history") or []
        if status != "completed" and history:  # the curves so far: a completed run has drawn them already
            from fmnist.artifacts.plots import plot_curves

            with contextlib.suppress(Exception):  # best effort, as the page
                plot_curves(history, self.path / CURVES, title=info.name if info else "")
        try:
            page = run_page(metrics, self.path, name=info.name if info else self.path.name,
                            config=info.config if info else {}, command=info.command if info else "")
            write_atomically(self.path / REPORT, lambda tmp: tmp.write_text(page, encoding="utf-8"))
        except Exception as exc:  # noqa: BLE001 - never mask the error that ended a failed run
            if status == "completed":
                raise
            log.warning("could not write %s (%s)", self.path / REPORT, " ".join(str(exc).split())[:200])
        files = [self.path / name for name in (BEST, CURVES, CONFUSION, MISCLASSIFIED, METRICS_CSV, REPORT)]
        self.trackers.finish(status, metrics, [f for f in files if f.is_file()])

    def record_status(self, status: str, error: str | None = None) -> None:
        """Set metrics.json's status ("running", "failed", "interrupted"), keeping whatever history it has.

        It also records this process id, so a summary can tell a crashed run (its process gone) from a
        live one. Best effort: an unwritable run directory is already what the error being recorded says.
        """
        try:
            metrics = json.loads((self.path / METRICS_JSON).read_text())
        except (OSError, ValueError):
            metrics = {}
        if not isinstance(metrics, dict):
            metrics = {}
        metrics.update({"status": status, **written_by()})
        if error is not None:
            metrics["error"] = error
        metrics.setdefault("history", [])
        with contextlib.suppress(UserError):
            self._write_metrics(metrics)

    def _write_metrics(self, metrics: dict[str, Any]) -> None:
        text = json.dumps(metrics, indent=2) + "\n"
        write_atomically(self.path / METRICS_JSON, lambda tmp: tmp.write_text(text))

    def write_figures(self, history: list[dict[str, Any]], confusion: torch.Tensor, class_names: list[str],
                      title: str, test_accuracy: float, mistakes: Mistakes | None = None) -> None:
        from fmnist.artifacts.plots import plot_confusion, plot_curves, plot_mistakes  # matplotlib: when drawing

        plot_curves(history, self.path / CURVES, title=title)
        plot_confusion(confusion, class_names, self.path / CONFUSION,
                       title=f"{title}: test accuracy {test_accuracy:.2%}")
        if mistakes is not None:
            plot_mistakes(mistakes, class_names, self.path / MISCLASSIFIED)


class FollowerRunDir(RunDir):
    """The run directory as every rank but rank 0 of a distributed run sees it: read (resume, the best
    weights for the final test), never claimed or written, so each file has exactly one writer."""

    @contextlib.contextmanager
    def claim(self, *, resuming: bool) -> Iterator[RunDir]:
        yield self

    def save_last(self, payload: dict[str, Any]) -> None:
        pass

    def save_best(self, payload: dict[str, Any]) -> None:
        pass

    def write_history(self, history: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        pass

    def record_status(self, status: str, error: str | None = None) -> None:
        pass

    def write_figures(self, history: list[dict[str, Any]], confusion: torch.Tensor, class_names: list[str],
                      title: str, test_accuracy: float, mistakes: Mistakes | None = None) -> None:
        pass

    def track(self, info: RunInfo, trackers: Trackers, epochs_done: int) -> None:
        pass  # rank 0 alone tells the trackers

    def finish(self, status: str) -> None:
        pass


def written_by() -> dict[str, Any]:
    """Which process wrote a metrics.json, so a sweep summary can tell a crashed job from a running one."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def read_metrics(run_dir: Path) -> tuple[dict[str, Any], str]:
    """(metrics.json, problem): an absent file is no problem (the run has not started), a corrupt one is."""
    path = run_dir / METRICS_JSON
    if not path.is_file():
        return {}, ""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {}, f"{METRICS_JSON} is unreadable ({type(exc).__name__})"
    if not isinstance(metrics, dict):
        return {}, f"{METRICS_JSON} is not a JSON object"
    return metrics, ""


def latest_checkpoint(search_dirs: tuple[Path, ...] = OUTPUT_DIRS) -> Path:
    """best.pt of the most recent training run under the output directories."""
    newest = _newest(search_dirs, BEST)
    if newest is None:
        raise _no_trained_model(search_dirs)
    return newest


def check_some_checkpoint(search_dirs: tuple[Path, ...] = OUTPUT_DIRS) -> None:
    """"No trained model found" before any work, from the first run found: choosing the latest means a walk
    of every run (0.14-0.24 s for 3,000 of them on a 2-core VM), made once, when the command reads the checkpoint."""
    if next(_run_checkpoints(search_dirs), None) is None:
        raise _no_trained_model(search_dirs)


def _run_checkpoints(search_dirs: tuple[Path, ...], name: str = BEST) -> Iterator[Path]:
    # A run directory holds metrics.json beside best.pt (a tracker's copy of best.pt, in mlartifacts/, does not).
    return (p for d in search_dirs if d.is_dir() for p in d.rglob(name) if (p.parent / METRICS_JSON).is_file())


def _newest(search_dirs: tuple[Path, ...], name: str) -> Path | None:
    """The run's checkpoint `name` written last under `search_dirs`, if any run has one."""
    return max(_run_checkpoints(search_dirs, name), key=lambda p: p.stat().st_mtime, default=None)


def _under(search_dirs: tuple[Path, ...]) -> str:
    return " or ".join(f"{d}/" for d in search_dirs)


def _no_trained_model(search_dirs: tuple[Path, ...]) -> UserError:
    return UserError(f"no trained model found under {_under(search_dirs)} (looked for {BEST}): train one with "
                     f"fmnist-train, or pass ckpt=PATH")


def eval_dir(checkpoint: Path, split: str) -> Path:
    """Where fmnist-eval writes by default: beside the checkpoint, one folder per split, and per checkpoint
    where it is not best.pt (last.pt's evaluation must not replace best.pt's)."""
    return checkpoint.parent / (f"eval-{split}" if checkpoint.name == BEST else f"eval-{split}-{checkpoint.stem}")
