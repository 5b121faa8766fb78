"""Hydra callbacks (named in conf/train.yaml): the sweep summary and page, kept current while a --multirun
runs; at its end, the sweep's parent run in MLflow is closed. And the lines of Hydra's plugins that open and
close a sweep, made readable (logging filters that conf/hydra/hydra_logging names)."""

from __future__ import annotations

import ast
import logging
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig

from fmnist.artifacts.atomic import absent_dirs, remove_empty
from fmnist.cli.overrides import override_parts
from fmnist.paths import quoted_override, sweep_dir

if TYPE_CHECKING:
    from fmnist.train.interrupt import ParallelStop

# The sweep directory of this process's --multirun and the folders above it that did not exist before it started:
# Hydra creates it (and writes multirun.yaml there) before it composes the jobs' configs, so a rejected one would
# leave it behind.
_new_dirs: list[Path] = []


class SummaryCallback(Callback):
    """Rewrites the sweep summary after every job and reports it when the --multirun ends.

    Exits with code 1 at the end if any job failed, so scripts notice; 128 + N when signal N stopped a
    sweep whose jobs run side by side (ParallelStop catches it here, in the sweep's own process).
    """

    def __init__(self) -> None:
        self.stop: ParallelStop | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from fmnist.artifacts.sweep import parallel_jobs
        from fmnist.train.interrupt import ParallelStop

        check_search(config.hydra.sweeper)
        folder = sweep_dir(config.hydra)
        check_jobs_free(folder, list(config.hydra.overrides.task))
        _new_dirs[:] = absent_dirs(folder)
        if parallel_jobs(config.hydra.launcher) > 1:
            self.stop = ParallelStop(folder)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            from fmnist.artifacts.sweep import write_summary

            write_summary(sweep_dir(config.hydra))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from fmnist.artifacts.sweep import close_trackers, report

        folder = sweep_dir(config.hydra)
        if not folder.is_dir():
            return
        failed = report(folder, lambda: finishing_command(folder))
        close_trackers(folder, failed > 0)
        if self.stop is not None and self.stop.exit_code is not None:
            sys.exit(self.stop.exit_code)
        if failed:
            sys.exit(1)


def check_search(sweeper: DictConfig) -> None:
    """A search's objective is each run's best validation accuracy, but Optuna's sweeper minimizes unless told
    otherwise: `hydra/sweeper=optuna` alone would search for the worst settings and report them as the best.
    (hparams_search=optuna sets maximize.) Its counts, which it would meet as a traceback after the search (no
    trials: 'No trials are completed yet') or as it starts (n_jobs=0: a division by zero). Checked before the
    first trial."""
    if "optuna" not in str(sweeper.get("_target_", "")).lower():
        return
    from fmnist.cli.common import fail  # the CLI module imports this one

    for key, what in (("n_trials", "the number of trials to run"), ("n_jobs", "the number of trials at once")):
        if isinstance(count := sweeper.get(key), int) and count < 1:
            fail("fmnist-train", f"hydra.sweeper.{key}={count} is not valid: expected {what} (1 or more)")
    direction = sweeper.get("direction")
    directions = list(direction) if isinstance(direction, ListConfig | list) else [direction]
    names = [str(d).rpartition(".")[2].lower() for d in directions]  # Direction.minimize, or as typed
    if names != ["maximize"]:
        fail("fmnist-train", f"hydra.sweeper.direction={','.join(names)}: the objective is the validation accuracy, "
                             f"which a search maximizes: add hydra.sweeper.direction=maximize (hparams_search=optuna "
                             f"sets it)")


def finishing_command(folder: Path) -> str:
    """The sweep's command line again (from the multirun.yaml Hydra wrote into its folder), into that folder,
    with resume=auto: every job that was stopped goes on from its last.pt, every job that never started
    starts, and finished ones only run their test again. Empty where the record cannot be read, and for a
    search (Optuna's sweeper), whose trials would sample other values than the stopped ones have."""
    try:
        record = yaml.safe_load((folder / "multirun.yaml").read_text())["hydra"]
        if not str(record["sweeper"]["_target_"]).endswith(".BasicSweeper"):
            return ""
        overrides = record["overrides"]
        hydra_overrides = [o for o in overrides["hydra"]
                           if override_parts(o)[0] not in ("hydra.sweep.dir", "hydra.mode")]
        task = [o for o in overrides["task"] if override_parts(o)[0] != "resume"]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return ""
    return shlex.join(["fmnist-train", "--multirun", *map(str, task), *map(str, hydra_overrides),
                       quoted_override("hydra.sweep.dir", str(folder)), "resume=auto"])


def check_jobs_free(folder: Path, overrides: list[str]) -> None:
    """A sweep into the folder of an earlier one (a fixed hydra.sweep.dir run again) is refused before its
    first job unless it resumes: each job would have been refused only after Hydra had written into that
    job's folder, and the summary, read from the folders, would have reported the earlier runs as this
    sweep's, with exit code 0. Likewise a folder that a running sweep's jobs hold."""
    if not folder.is_dir():
        return
    from fmnist.artifacts.rundir import RunDir, RunDirectoryInUse
    from fmnist.cli.common import fail  # the CLI module imports this one

    resuming = any(override_parts(o)[0] == "resume" for o in overrides)
    for job in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            RunDir(job).check_free(resuming=resuming, setting="hydra.sweep.dir")
        except RunDirectoryInUse as exc:
            fail("fmnist-train", str(exc))


def discard_rejected_sweep() -> None:
    """After a sweep whose jobs' configs were refused before any ran: remove what Hydra made for it (its folder
    holding multirun.yaml alone, and the empty folders above it that it created), as a rejected single run
    leaves nothing. A folder that holds anything else is left as it is."""
    if not _new_dirs:
        return
    folder = _new_dirs[0]
    try:
        if {p.name for p in folder.iterdir()} <= {"multirun.yaml"}:
            (folder / "multirun.yaml").unlink(missing_ok=True)
            remove_empty(_new_dirs)
    except OSError:
        pass


class JoblibLaunchLine(logging.Filter):
    """The joblib launcher opens a sweep with every argument of joblib.Parallel (`Joblib.Parallel(n_jobs=2,
    backend=loky,prefer=processes,require=None,verbose=0,timeout=None,pre_dispatch=2*n_jobs,...) is launching
    4 jobs`): of those, a user set or wants to know only how many run at once."""

    def filter(self, record: logging.LogRecord) -> bool:
        said = re.fullmatch(r"Joblib\.Parallel\((.*)\) is launching (\d+) jobs", record.getMessage(), re.DOTALL)
        at_once = re.search(r"(?:^|,)n_jobs=(\d+)", said.group(1)) if said else None  # -1: joblib's count, kept
        if said and at_once:
            jobs = int(said.group(2))
            at_a_time = min(jobs, int(at_once.group(1)))
            record.msg, record.args = f"launching {jobs} job{'s' * (jobs != 1)}, {at_a_time} at a time", ()
        return True


class OptunaBestLines(logging.Filter):
    """The Optuna sweeper closes a search with Python's reprs: `Best parameters: {'optimizer.lr':
    0.0005611516415334506, ...}` and `Best value: 0.8456666666666667`. Said as the summary says a job: overrides,
    long floats shortened, and the objective, the best validation accuracy, in percent."""

    def filter(self, record: logging.LogRecord) -> bool:
        from fmnist.artifacts.sweep import readable

        said = re.fullmatch(r"Best (parameters|value): (.*)", record.getMessage(), re.DOTALL)
        try:
            found = ast.literal_eval(said.group(2)) if said else None
        except (ValueError, SyntaxError):
            return True
        if isinstance(found, dict):
            record.msg = "best trial: " + readable(" ".join(f"{key}={value}" for key, value in found.items()))
        elif isinstance(found, float):
            record.msg = f"best trial's validation accuracy: {100 * found:.2f}%"
        else:
            return True
        record.args = ()
        return True
