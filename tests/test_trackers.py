"""logger=tensorboard and logger=mlflow through the CLI, read back with each tracker's own reader; a tracker
that fails never fails the run."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
from helpers import FAST, cli, one_line_error

from fmnist.artifacts.tracking import RunInfo, Trackers

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="tensorboard is not installed (pip install .[tensorboard])")
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason="mlflow is not installed (pip install .[mlflow])")
TINY = ("model=mlp", "model.hidden=[32]", "dataset=mnist", *FAST)


def history(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())["history"]


@needs_tensorboard
def test_tensorboard_events_hold_the_run_scalars_hparams_and_figures(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli("fmnist-train", *TINY, "logger=[csv,tensorboard]", "logger.tensorboard.every_steps=3", "hydra.run.dir=run",
        cwd=tmp_path)
    run = tmp_path / "run"
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"epoch/train_loss", "epoch/val_acc", "epoch/lr", "epoch/samples_per_s", "step/loss", "step/acc",
            "step/lr", "step/samples_per_s", "hparam/test_acc"} <= set(tags["scalars"])
    rows = history(run)
    val = [(s.step, s.value) for s in events.Scalars("epoch/val_acc")]
    assert val == [(r["epoch"], pytest.approx(r["val_acc"])) for r in rows]
    steps = [s.step for s in events.Scalars("step/loss")]  # 400*0.9/32 -> 12 steps an epoch, every 3rd
    assert steps == [3, 6, 9, 15, 18, 21]
    test_acc = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
    assert events.Scalars("hparam/test_acc")[-1].value == pytest.approx(test_acc)
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(events.PluginTagToContent("hparams"))
    assert {"figures/curves", "figures/confusion_matrix", "figures/misclassified"} <= set(tags["images"])


@needs_mlflow
def test_mlflow_run_holds_params_epoch_metrics_and_artifacts(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'store.db'}"
    proc = cli("fmnist-train", *TINY, "logger=mlflow", f"logger.mlflow.tracking_uri={store}", "hydra.run.dir=run",
               cwd=tmp_path)
    client = MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("fmnist").experiment_id])
    assert f"mlflow: run {run.info.run_id} in {store} (mlflow ui --backend-store-uri {store})" in proc.stdout
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.runName"] == "mlp on mnist"
    assert run.data.params["optimizer.lr"] == "0.001" and run.data.params["epochs"] == "2"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_acc")] == [
        (r["epoch"], pytest.approx(r["val_acc"])) for r in history(tmp_path / "run")]
    assert run.data.metrics["test_acc"] == json.loads((tmp_path / "run" / "metrics.json").read_text())["test"][
        "accuracy"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best.pt", "curves.png", "confusion_matrix.png", "report.html", "metrics.csv"} <= artifacts
    assert (tmp_path / "run" / "metrics.csv").is_file()  # csv is written whatever the loggers


@needs_mlflow
def test_a_resumed_run_continues_its_mlflow_run(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'store.db'}"
    recipe = (*TINY, "logger=mlflow", f"logger.mlflow.tracking_uri={store}", "hydra.run.dir=run")
    cli("fmnist-train", *recipe, "epochs=1", cwd=tmp_path)
    proc = cli("fmnist-train", *recipe, "epochs=2", "resume=auto", cwd=tmp_path)  # one more epoch, same run
    client = MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("fmnist").experiment_id])
    assert f"mlflow: continuing run {run.info.run_id} in {store}" in proc.stdout
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]


@needs_mlflow
def test_an_mlflow_sweep_is_one_parent_run_with_a_child_per_job(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    cli("fmnist-train", "--multirun", *TINY, "optimizer.lr=1e-3,2e-3", "logger=mlflow", "hydra.sweep.dir=multirun/s",
        cwd=tmp_path)
    store = f"sqlite:///{tmp_path / 'multirun' / 'mlflow.db'}"  # the default store: in the sweep's output root
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("fmnist").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.data.params["optimizer.lr"] for c in children} == {"0.001", "0.002"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert "report.html" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}


@pytest.mark.parametrize("logger", [pytest.param("tensorboard", marks=needs_tensorboard),
                                    pytest.param("mlflow", marks=needs_mlflow)])
def test_an_unwritable_tracker_store_costs_one_warning_not_the_run(tmp_path: Path, logger: str):
    (tmp_path / "blocked").write_text("a file where the tracker wants a directory")
    where = (f"logger.tensorboard.log_dir={tmp_path / 'blocked' / 'tb'}" if logger == "tensorboard" else
             f"logger.mlflow.tracking_uri=sqlite:///{tmp_path / 'blocked' / 'mlflow.db'}")
    proc = cli("fmnist-train", *TINY, f"logger=[csv,{logger}]", where, "hydra.run.dir=run", cwd=tmp_path)
    warnings = [line for line in proc.stdout.splitlines() if f"logger {logger}" in line]
    assert len(warnings) == 1 and "checkpoints and metrics files are not affected" in warnings[0], proc.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and (tmp_path / "run" / "best.pt").is_file()
    assert "Traceback" not in proc.stdout + proc.stderr


class Flaky:
    """A tracker whose store goes away after the first epoch."""

    name = "flaky"

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def start(self, info: RunInfo) -> None: ...

    def log_step(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_epoch(self, row: dict) -> None:
        if self.epochs:
            raise OSError(28, "No space left on device")
        self.epochs.append(row["epoch"])

    def finish(self, status: str, summary: dict, files: list[Path]) -> None:
        raise AssertionError("a tracker that failed is not called again")


class Steady(Flaky):
    name = "steady"

    def log_epoch(self, row: dict) -> None:
        self.epochs.append(row["epoch"])

    def finish(self, status: str, summary: dict, files: list[Path]) -> None:
        self.finished = status


def test_a_tracker_failing_mid_run_is_dropped_with_one_warning_and_the_others_go_on(caplog):
    flaky, steady = Flaky(), Steady()
    trackers = Trackers([flaky, steady])
    with caplog.at_level(logging.WARNING, logger="fmnist"):
        for epoch in (1, 2, 3):
            trackers.log_epoch({"epoch": epoch})
        trackers.finish("completed", {}, [])
    assert flaky.epochs == [1] and steady.epochs == [1, 2, 3] and steady.finished == "completed"
    [record] = caplog.records
    assert "logger flaky failed" in record.getMessage() and "No space left on device" in record.getMessage()


@needs_mlflow
def test_a_tracking_server_that_does_not_answer_is_refused_before_the_run(tmp_path: Path):
    """MLflow's client retried the connection for 4 minutes before the run began, then trained without it."""
    import socket

    with socket.socket() as closed:  # a port nothing listens on: connections are refused at once
        closed.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{closed.getsockname()[1]}"
    proc = cli("fmnist-train", *TINY, "logger=[csv,mlflow]", f"logger.mlflow.tracking_uri={uri}", cwd=tmp_path,
               check=False)
    assert one_line_error(proc) == (f"fmnist-train: error: logger=mlflow: no server answers at "
                                    f"logger.mlflow.tracking_uri={uri} ([Errno 111] Connection refused): start it or "
                                    f"correct the URI, or leave mlflow out of logger")
    assert list(tmp_path.iterdir()) == []


def test_any_http_answer_counts_as_a_server(tmp_path: Path):
    """Only an answer is asked for: a status other than 200 (a login, a route of another version) is the server's
    to give, not a reason to refuse the run."""
    import http.server
    import threading

    from fmnist.artifacts.tracking import check_servers

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_servers({"mlflow": {"tracking_uri": f"http://127.0.0.1:{server.server_address[1]}/"}})
        # credentials in the URI are the server's business (urllib read "user:pw@127.0.0.1" as the host name)
        check_servers({"mlflow": {"tracking_uri": f"http://user:pw@127.0.0.1:{server.server_address[1]}"}})
    finally:
        server.shutdown()
        server.server_close()
    check_servers({"mlflow": {"tracking_uri": str(tmp_path / "store")}, "csv": {}})  # no server: nothing asked
