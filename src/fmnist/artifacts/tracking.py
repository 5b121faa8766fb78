"""Trackers: where a run's numbers go besides its own directory (TensorBoard, MLflow; `logger=` in the config).

A tracker is a guest of the run directory (artifacts/rundir.py calls it): it is told that the run started,
a few steps' scalars, each epoch, and how the run ended. It may fail at any of these (a store that became
unwritable, a server that went away): the first failure is one warning, the tracker is dropped for the
rest of the run, and the run goes on. Checkpoints and the metrics files never depend on a tracker.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fmnist.errors import UserError

log = logging.getLogger("fmnist")

EPOCH_SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "samples_per_s", "seconds")  # sent per epoch
MLFLOW_SWEEP_MEMO = ".mlflow_sweep.json"  # in a sweep directory: its parent run in MLflow, by store


@dataclass(frozen=True)
class Launch:
    """How the run was started: what the CLI knows and the training code does not."""

    command: str = ""  # the command line, as the report page and the trackers show it
    sweep_dir: Path | None = None  # set when the run is one job of a --multirun
    job: int | None = None


@dataclass(frozen=True)
class RunInfo:
    """What a tracker and the report page are told about the run when it starts."""

    run_dir: Path
    name: str  # "cnn on fashion"
    config: dict[str, Any]  # the resolved config
    hparams: dict[str, Any]  # the choices and knobs that tell runs apart (TensorBoard's HParams columns)
    launch: Launch = Launch()
    resumed: bool = False

    @property
    def params(self) -> dict[str, str]:
        return flatten(self.config)

    @property
    def command(self) -> str:
        return self.launch.command

    @property
    def sweep_dir(self) -> Path | None:
        return self.launch.sweep_dir

    @property
    def job(self) -> int | None:
        return self.launch.job


class Tracker(Protocol):
    name: str

    def start(self, info: RunInfo) -> None: ...

    def log_step(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_epoch(self, row: dict[str, Any]) -> None: ...

    def finish(self, status: str, summary: dict[str, Any], files: list[Path]) -> None: ...


def step_interval(loggers: dict[str, Any]) -> int:
    """Every how many training steps the trackers want scalars (0: never). The same in every rank of a
    distributed run, since reading the scalars is a collective operation."""
    tensorboard = loggers.get("tensorboard")
    return int(tensorboard.get("every_steps") or 0) if isinstance(tensorboard, dict) else 0


class Trackers:
    """The chosen trackers as one: each call goes to every tracker still working."""

    def __init__(self, trackers: list[Tracker] | None = None) -> None:
        self.active: list[Tracker] = list(trackers or [])

    def start(self, info: RunInfo) -> None:
        self._each("start", info)

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        self._each("log_step", step, scalars)

    def log_epoch(self, row: dict[str, Any]) -> None:
        self._each("log_epoch", row)

    def finish(self, status: str, summary: dict[str, Any], files: list[Path]) -> None:
        self._each("finish", status, summary, files)
        self.active = []

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.active):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # noqa: BLE001 - whatever a tracker raises, the run must go on
                self.active.remove(tracker)
                reason = " ".join(str(exc).split())[:300] or type(exc).__name__
                log.warning("logger %s failed and is off for the rest of this run (%s: %s); checkpoints and "
                            "metrics files are not affected", tracker.name, type(exc).__name__, reason)


SERVER_ANSWER_SECONDS = 10.0


def check_servers(loggers: dict[str, dict[str, Any]]) -> None:
    """A tracking server that does not answer is refused before the run: MLflow's client retries a connection
    for about 4 minutes (to ride out a server's rate limits) before the tracker gives up, a wait with nothing
    to show for it. Any HTTP answer will do (an MLflow server's /health needs no login)."""
    uri = str((loggers.get("mlflow") or {}).get("tracking_uri") or "")
    if uri.startswith(("http://", "https://")) and (reason := _no_answer(uri)):
        raise UserError(f"logger=mlflow: no server answers at logger.mlflow.tracking_uri={uri} ({reason}): start "
                        f"it or correct the URI, or leave mlflow out of logger")


@functools.cache
def _no_answer(uri: str) -> str | None:
    """Why nothing answered an HTTP request at uri/health, or None where something did."""
    import http.client  # here: every command imports this module, few ask a server
    import urllib.error
    import urllib.parse
    import urllib.request

    try:
        parts = urllib.parse.urlsplit(uri)  # without user:password@, which urllib would read as the host
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
        where = f"{host}:{parts.port}" if parts.port else host
        health = urllib.parse.urlunsplit((parts.scheme, where, parts.path.rstrip("/") + "/health", "", ""))
        urllib.request.urlopen(health, timeout=SERVER_ANSWER_SECONDS).close()
    except urllib.error.HTTPError:
        return None  # an HTTP status: a server is there
    except urllib.error.URLError as exc:
        return str(exc.reason)
    except TimeoutError:
        return f"no answer in {SERVER_ANSWER_SECONDS:.0f} s"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None


def make_trackers(loggers: dict[str, dict[str, Any]], run_dir: Path) -> Trackers:
    """The trackers `logger=` asks for (csv is the run directory's own files: no tracker). A tracker that
    cannot even be created is dropped with one warning, like one that fails later."""
    trackers: list[Tracker] = []
    for name, settings in loggers.items():
        try:
            if name == "tensorboard":
                from fmnist.artifacts.tensorboard_tracker import TensorBoardTracker

                trackers.append(TensorBoardTracker(settings, run_dir))
            elif name == "mlflow":
                from fmnist.artifacts.mlflow_tracker import MlflowTracker

                trackers.append(MlflowTracker(settings, run_dir))
        except Exception as exc:  # noqa: BLE001
            log.warning("logger %s is off for this run (%s: %s); checkpoints and metrics files are not affected",
                        name, type(exc).__name__, " ".join(str(exc).split())[:300])
    return Trackers(trackers)


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys and printable values (what trackers store as parameters)."""
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: str(node)}
