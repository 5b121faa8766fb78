"""logger=mlflow: one MLflow run per training run (pip install 'fmnist[mlflow]').

Params (the resolved config), per-epoch metrics, the final test metrics, and artifacts (best.pt, the
figures, report.html). The store is local, under the output root (outputs/mlflow.db with the artifacts in
outputs/mlartifacts; multirun/ for sweeps), unless `tracking_uri` names another (a server, a database).
It is an SQLite file, not MLflow's older `mlruns/` folder store: MLflow 3 refuses that one by default.
The jobs of a --multirun are child runs of one parent run per sweep: the first job to start creates it,
under a lock in the sweep directory, and the sweep's end closes it with the sweep's page and summary
attached. A resumed run continues its MLflow run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from fmnist.artifacts.atomic import taking_turns, write_atomically
from fmnist.artifacts.rundir import BEST, OUTPUT_DIRS
from fmnist.artifacts.tracking import EPOCH_SCALARS, RunInfo
from fmnist.artifacts.tracking import MLFLOW_SWEEP_MEMO as SWEEP_MEMO

log = logging.getLogger(__name__)

RUN_MEMO = ".mlflow_run.json"  # in the run directory: which MLflow run a resumed run continues
SWEEP_LOCK = ".mlflow_sweep.lock"  # in the sweep directory, beside SWEEP_MEMO
STATUS = {"completed": RunStatus.to_string(RunStatus.FINISHED), "failed": RunStatus.to_string(RunStatus.FAILED),
          "interrupted": RunStatus.to_string(RunStatus.KILLED)}
MAX_PARAM = 6000  # MLflow's limit on a parameter value
BATCH = 100  # MLflow's limit on parameters per log_batch call
STORE, ARTIFACTS = "mlflow.db", "mlartifacts"  # in the output root, when no tracking_uri is given


def default_store(run_dir: Path, sweep_dir: Path | None = None) -> Path:
    """Where the local store lives: the output root (outputs/ for runs, multirun/ for sweeps: one store for
    every job of a sweep); beside the run or sweep directory when it is elsewhere."""
    base = (sweep_dir or run_dir).resolve()
    for root in OUTPUT_DIRS:
        if base.is_relative_to(root.resolve()):
            return root.resolve()
    return base.parent


def store_uri(root: Path) -> str:
    return f"sqlite:///{root / STORE}"


class MlflowTracker:
    name = "mlflow"

    def __init__(self, settings: dict[str, Any], run_dir: Path) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.client: MlflowClient | None = None
        self.run_id = ""

    def start(self, info: RunInfo) -> None:
        for name in ("mlflow", "alembic"):  # their INFO lines ("Creating initial MLflow database tables")
            logging.getLogger(name).setLevel(logging.WARNING)
        name = str(self.settings.get("experiment") or "fmnist")
        if self.settings.get("tracking_uri"):
            uri = str(self.settings["tracking_uri"])
            self.client = client = MlflowClient(tracking_uri=uri)
            experiment = _experiment_id(client, name, None)
        else:  # a new store is created (its tables) by the first job of a sweep, the others wait
            root = default_store(info.run_dir, info.sweep_dir)
            uri = store_uri(root)
            with taking_turns(root / f".{STORE}.lock"):
                self.client = client = MlflowClient(tracking_uri=uri)
                experiment = _experiment_id(client, name, (root / ARTIFACTS).as_uri())
        previous = _read_json(self.run_dir / RUN_MEMO).get("run_id") if info.resumed else None
        if isinstance(previous, str) and _exists(client, previous):
            self.run_id = previous
            client.update_run(previous, status=RunStatus.to_string(RunStatus.RUNNING))
            log.info("mlflow: continuing run %s in %s", previous, uri)
            return
        tags = {"fmnist.run_dir": str(info.run_dir), "fmnist.command": info.command[:MAX_PARAM]}
        name = info.name
        if info.sweep_dir is not None:
            tags[MLFLOW_PARENT_RUN_ID] = sweep_parent(client, uri, experiment, info.sweep_dir)
            name = f"job {info.job}: {name}"
        tags[MLFLOW_RUN_NAME] = name
        self.run_id = client.create_run(experiment, tags=tags).info.run_id
        params = [Param(k[:250], v[:MAX_PARAM]) for k, v in info.params.items()]
        for i in range(0, len(params), BATCH):
            client.log_batch(self.run_id, params=params[i:i + BATCH])
        memo = json.dumps({"run_id": self.run_id, "tracking_uri": uri}) + "\n"
        write_atomically(self.run_dir / RUN_MEMO, lambda tmp: tmp.write_text(memo))
        # the default store may be far from the run directory (the output root, or beside a run elsewhere)
        log.info("mlflow: run %s in %s (mlflow ui --backend-store-uri %s)", self.run_id, uri, uri)

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        pass  # per-epoch metrics only: a file store grows by one line per value

    def log_epoch(self, row: dict[str, Any]) -> None:
        assert self.client is not None
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(row[k]), now, int(row["epoch"])) for k in EPOCH_SCALARS
                   if isinstance(row.get(k), int | float)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: str, summary: dict[str, Any], files: list[Path]) -> None:
        if self.client is None:
            return
        client, now = self.client, int(time.time() * 1000)
        test = summary.get("test") if isinstance(summary.get("test"), dict) else {}
        final = {"test_acc": test.get("accuracy"), "test_loss": test.get("loss"), "test_macro_f1": test.get("macro_f1"),
                 "best_val_acc": summary.get("best_val_acc")}
        metrics = [Metric(k, float(v), now, 0) for k, v in final.items() if isinstance(v, int | float)]
        if metrics:
            client.log_batch(self.run_id, metrics=metrics)
        for path in files:
            if path.is_file() and (path.name != BEST or self.settings.get("log_checkpoint", True)):
                client.log_artifact(self.run_id, str(path))
        client.set_terminated(self.run_id, STATUS.get(status, STATUS["failed"]))


def _experiment_id(client: MlflowClient, name: str, artifacts: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except Exception:  # another job of the sweep created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _exists(client: MlflowClient, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except Exception:  # noqa: BLE001 - deleted, or another store
        return False
    return True


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sweep_parent(client: MlflowClient, uri: str, experiment: str, sweep_dir: Path) -> str:
    """The id of the sweep's parent run in this store, created by the first job that asks."""
    with taking_turns(sweep_dir / SWEEP_LOCK):  # parallel jobs: one creates the parent run, the others read its id
        memo = _read_json(sweep_dir / SWEEP_MEMO)
        known = memo.get(uri)
        if isinstance(known, str) and _exists(client, known):
            return known
        run = client.create_run(experiment, tags={MLFLOW_RUN_NAME: f"sweep {sweep_dir.name}",
                                                  "fmnist.sweep_dir": str(sweep_dir)})
        memo[uri] = run.info.run_id
        text = json.dumps(memo, indent=2) + "\n"
        write_atomically(sweep_dir / SWEEP_MEMO, lambda tmp: tmp.write_text(text))
        return run.info.run_id


def close_sweep(sweep_dir: Path, failed: bool, files: list[Path]) -> None:
    """At the end of a --multirun: attach the sweep's page and summary to its parent run(s) and end them."""
    for uri, run_id in _read_json(sweep_dir / SWEEP_MEMO).items():
        client = MlflowClient(tracking_uri=uri)
        for path in files:
            if path.is_file():
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, STATUS["failed" if failed else "completed"])
