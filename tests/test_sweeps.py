"""--multirun through the real Hydra CLI: job directories, the summary, failures, parallel jobs, Optuna."""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAST, assert_real_png, cli, console_script, one_line_error

from fmnist.artifacts.sweep import report

ROOT = Path(__file__).resolve().parents[1]


def needs_plugin(name: str, extra: str) -> pytest.MarkDecorator:
    """Skip unless the Hydra plugin `hydra_plugins.hydra_<name>` is installed (it comes with fmnist[extra])."""
    missing = importlib.util.find_spec(f"hydra_plugins.hydra_{name}") is None
    return pytest.mark.skipif(missing, reason=f"hydra-{name.replace('_', '-')} is not installed "
                                              f"(pip install .[{extra}])")


def summary(sweep: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((sweep / "sweep_summary.csv").read_text().splitlines()))


def test_grid_runs_every_combination_and_summarises(tmp_path: Path):
    proc = cli("fmnist-train", "--multirun", "model=mlp,bn_cnn", "optimizer.lr=1e-3,3e-3", "dataset=mnist", *FAST,
               "hydra.sweep.dir=sweep", cwd=tmp_path)
    sweep = tmp_path / "sweep"
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    for job in jobs:
        assert (sweep / job / "best.pt").is_file() and (sweep / job / "curves.png").is_file()
    rows = summary(sweep)
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    vals = [float(r["best_val_acc"]) for r in rows]
    assert vals == sorted(vals, reverse=True)
    overrides = {r["overrides"] for r in rows}
    assert "model=bn_cnn optimizer.lr=0.003 dataset=mnist epochs=2 batch_size=32 progress=False" in overrides
    assert {r["swept"] for r in rows} == {f"model={m} optimizer.lr={lr}" for m in ("mlp", "bn_cnn")
                                          for lr in ("0.001", "0.003")}  # the keys that tell jobs apart
    assert all(r["epochs"] == "2" and float(r["test_acc"]) > 0 for r in rows)
    md = (sweep / "sweep_summary.md").read_text()
    assert md.count("| completed |") == 4
    assert md.startswith("Overrides of every job: `dataset=mnist epochs=2 batch_size=32 progress=False`")
    page = (sweep / "report.html").read_text()
    assert page.count('href="0/report.html"') == 1 and "optimizer.lr=0.003" in page
    assert_real_png(sweep / "sweep.png")
    assert "sweep summary" in proc.stdout


@pytest.mark.parametrize("chdir", ["false", "true"])
def test_jobs_side_by_side_share_the_default_sweep_directory(tmp_path: Path, chdir: str):
    """The default hydra.sweep.dir names the time and pid of the process that resolves it: each worker process
    resolved its own, so the jobs went into directories of their own and the summary found none of them.
    Under hydra.job.chdir=true the summary was written inside each job's directory."""
    cli("fmnist-train", "--multirun", "model=mlp", "optimizer.lr=1e-3,2e-3", "dataset=mnist", *FAST,
        f"hydra.job.chdir={chdir}", cwd=tmp_path)
    sweeps = [p for p in (tmp_path / "multirun").glob("*/*") if p.is_dir()]
    assert len(sweeps) == 1, sweeps
    assert sorted(p.name for p in sweeps[0].iterdir() if p.is_dir()) == ["0", "1"]
    assert [r["status"] for r in summary(sweeps[0])] == ["completed", "completed"]
    assert not list(sweeps[0].glob("*/multirun"))


def test_failing_job_is_recorded_and_the_others_run(tmp_path: Path):
    proc = cli("fmnist-train", "--multirun", "model=mlp", "optimizer=sgd", "optimizer.momentum=0.0",
               "optimizer.lr=0.01,1e12,0.02", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path, check=False)
    assert proc.returncode == 1  # the summary is written, and scripts still notice the failure
    rows = {r["job"]: r for r in summary(tmp_path / "sweep")}
    assert rows["1"]["status"] == "failed" and "NaN/inf" in rows["1"]["error"]
    assert rows["0"]["status"] == rows["2"]["status"] == "completed"
    assert list(rows) == ["0", "2", "1"] or list(rows) == ["2", "0", "1"]  # failures last


def test_a_combination_that_does_not_compose_is_refused_before_any_job_runs(tmp_path: Path):
    # rmsprop has no nesterov key: Hydra checks every job's config first, so no compute is spent.
    proc = cli("fmnist-train", "--multirun", "optimizer=sgd,rmsprop", "optimizer.nesterov=true", "model=mlp",
               "dataset=mnist", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "optimizer.nesterov is not a setting of optimizer=rmsprop (only of other optimizer options)" in \
        proc.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.glob("sweep/*/best.pt"))


@pytest.mark.parametrize(("tool", "args", "says"), [
    ("fmnist-train", ("model=mlp,cnn", "batch_size=0"),
     "batch_size=0 is not valid: expected an integer in [1, 2^31) (in the sweep's job model=mlp)"),
    ("fmnist-train", ("optimizer.lr=1e-3,-1", "model=mlp,cnn"),
     "optimizer.lr=-1 is not valid: expected a number > 0 (in the sweep's job optimizer.lr=-1 model=mlp)"),
    ("fmnist-train", ("scheduler=none,cosine", "compile=cudagraph,none"),
     "compile=cudagraph replays a fixed learning rate"),  # a combination, in a job of the grid
    ("fmnist-predict", ("ckpt=missing.pt", "index=0,-1"), "index=-1 is not valid"),
    # glob() lists a group's options through Hydra's config loader ("ConfigLoader is not set", every glob)
    ("fmnist-train", ("model=glob(*,exclude=[bn_*,cnn,mlp])", "batch_size=0"),
     "batch_size=0 is not valid: expected an integer in [1, 2^31) (in the sweep's job model=feedforward)"),
    # a sweep of no jobs: a folder left, exit 0
    ("fmnist-train", ("model=glob(res*)",), "model=glob(res*) matches none of model's options: bn_cnn, bn_cnn_wide, "
                                            "cnn, feedforward, mlp, speednet"),
    ("fmnist-train", ("optimizer.lr=glob(*)",), "optimizer.lr=glob(*): glob() picks among a config group's options "
                                                "(model=glob(*)); optimizer.lr is a setting: list its values"),
    ("fmnist-train", ("epochs=range(3,3)",), "epochs=range(3,3) sweeps no values"),
    # every job continued the one run, in its directory, and the summary reported the jobs as not started
    ("fmnist-train", ("resume=latest", "epochs=2,3"), "resume=latest in a --multirun: a sweep's jobs each continue "
                                                      "their own run (resume=auto, with the sweep's hydra.sweep.dir)"),
    # each job found the data missing as it started
    ("fmnist-train", ("model=mlp,cnn", "dataset=mnist", "dataset.root=nowhere", "dataset.download=false"),
     "MNIST not found: "),
])
def test_a_value_that_a_job_cannot_run_with_is_refused_before_the_sweep_starts(tmp_path: Path, tool: str,
                                                                              args: tuple[str, ...], says: str):
    """Each job used to refuse it as it started, after the sweep's folder and the jobs before it."""
    proc = cli(tool, "--multirun", *args, "hydra.sweep.dir=sweep", cwd=tmp_path, check=False)
    assert says in one_line_error(proc)
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_of_one_job_is_counted_in_the_singular(tmp_path: Path):
    proc = cli("fmnist-train", "--multirun", "model=mlp", "dataset=mnist", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert "] launching 1 job, 1 at a time\n" in proc.stdout and "(1 job, 0 failed)\n" in proc.stdout, proc.stdout


def test_summarize_script_rebuilds_a_partial_sweep(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Also: a sampler's long floats are shown to four digits where the summary is read, kept exact in the CSV."""
    proc = cli("fmnist-train", "--multirun", "model=mlp", "optimizer.lr=0.0005611516415334506,1e-2", "dataset=mnist",
               *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert "optimizer.lr=0.0005612\n" in proc.stdout + proc.stderr
    assert "`optimizer.lr=0.0005612`" in (tmp_path / "sweep" / "sweep_summary.md").read_text()
    assert {r["swept"] for r in summary(tmp_path / "sweep")} == {"optimizer.lr=0.0005611516415334506",
                                                                 "optimizer.lr=0.01"}
    sweep = tmp_path / "sweep"
    for name in ("sweep_summary.csv", "sweep_summary.md", "sweep.png"):
        (sweep / name).unlink()
    (sweep / "1" / "metrics.json").unlink()  # a job that never got to write metrics
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "summarize_sweep.py"), str(sweep)],
                          capture_output=True, text=True, check=True)
    rows = {r["job"]: r for r in summary(sweep)}
    assert rows["0"]["status"] == "completed" and rows["1"]["status"] == "not started"
    assert "| 0 | completed |" in proc.stdout
    assert_real_png(sweep / "sweep.png")
    with caplog.at_level("INFO", logger="fmnist"):
        report(sweep)
    assert "  job 1  not started  optimizer.lr=0.01\n" in caplog.text + "\n"  # not "val  test" with no numbers


def test_long_floats_are_shown_short_and_other_overrides_as_they_are():
    from fmnist.artifacts.sweep import readable

    assert readable("optimizer.lr=1000000000000.0 model=mlp batch_size=1000000 model.dropout=0.30592644736118974 "
                    "optimizer.lr=0.00001234567 optimizer.lr=1e-3 tta=flip") == \
        "optimizer.lr=1e12 model=mlp batch_size=1000000 model.dropout=0.3059 optimizer.lr=1.235e-5 " \
        "optimizer.lr=1e-3 tta=flip"
    # Hydra's sweeper records a job's true, false and null in Python's words (progress=False)
    assert readable("progress=False dataset.augment.hflip=True resume=None") == \
        "progress=false dataset.augment.hflip=true resume=null"


def test_runs_started_together_never_share_a_directory(tmp_path: Path):
    exe = console_script("fmnist-train")
    procs = [subprocess.Popen([str(exe), "model=mlp", "dataset=mnist", "epochs=1", "progress=false"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(3)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 3 and all((r / "best.pt").is_file() for r in runs)


def test_parallel_jobs_never_ask_for_more_threads_than_cores(tmp_path: Path):
    cli("fmnist-train", "--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=mlp",
        "optimizer.lr=1e-3,2e-3", "dataset=mnist", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    rows = summary(tmp_path / "sweep")
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // 2)  # one each on 2 cores: nothing spins; all of them once the other job ends
    following = f", up to {cores} while other processes leave cores free" if cores > 1 else ""
    assert f"cpu threads {threads} (threads=auto, {cores} usable cores, 2 processes side by side, " \
           f"OMP_WAIT_POLICY=default{following})" in (tmp_path / "sweep" / "0" / "train.log").read_text()


def test_the_process_that_launches_parallel_jobs_never_imports_torch(tmp_path: Path):
    """Sizing the launcher and drawing the summary's chart: torch's import (2-3 s) would be paid again beside
    the jobs' own, in every parallel sweep."""
    from fmnist.config import no_gpu_driver
    if not no_gpu_driver():
        pytest.skip("a GPU driver is here (or this is not Linux): torch is asked whether it sees the GPU")
    row = {"job": "0", "status": "completed", "swept": "optimizer.lr=0.001", "params": {"optimizer.lr": "0.001"},
           "best_val_acc": 0.5, "history": [{"epoch": 1, "val_acc": 0.5}]}
    script = ("import sys\nfrom pathlib import Path\nfrom fmnist.config import sweep_jobs\n"
              "from fmnist.artifacts.plots import plot_sweep\n"
              f"jobs = sweep_jobs('auto', 'auto')\nplot_sweep([{row!r}], 'optimizer.lr', Path('sweep.png'))\n"
              "print('JOBS', jobs, 'HEAVY', sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert f"JOBS {len(os.sched_getaffinity(0))} HEAVY []" in proc.stdout, proc.stdout + proc.stderr
    assert_real_png(tmp_path / "sweep.png")


WORKER = """
import multiprocessing, os, sys
from fmnist.cli.common import end_worker_without_teardown

class Witness:  # writes when the interpreter tears the modules down
    def __init__(self):
        self.write = os.write
    def __del__(self):
        self.write(2, b"TORN DOWN\\n")

def job(queue, code):
    global witness
    end_worker_without_teardown()
    end_worker_without_teardown()  # once per job: one ending however many jobs the worker runs
    witness = Witness()
    queue.put(b"x" * 2**22)  # sent by the queue's own thread after the job returns: the ending must wait for it
    if code:
        raise SystemExit(code)

if __name__ == "__main__":
    for code in (0, 3):
        queue = multiprocessing.get_context("spawn").Queue()
        worker = multiprocessing.get_context("spawn").Process(target=job, args=(queue, code))
        worker.start()
        print("GOT", len(queue.get(timeout=120)), flush=True)
        worker.join(120)
        print("EXIT", worker.exitcode, flush=True)
"""


def test_a_sweep_worker_asked_to_end_skips_the_teardown_and_loses_nothing(tmp_path: Path):
    """The sweep's process waits for its workers before it exits, so a worker's teardown of torch was every
    parallel sweep's last ~1.5 s. A worker that ends on an error keeps the interpreter's ending and its code."""
    (tmp_path / "worker.py").write_text(WORKER)
    proc = subprocess.run([sys.executable, "worker.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.stdout.splitlines() == ["GOT 4194304", "EXIT 0", "GOT 4194304", "TORN DOWN", "EXIT 3"], proc.stdout


def test_a_multirun_runs_its_jobs_side_by_side_fitted_to_the_cores(tmp_path: Path):
    proc = cli("fmnist-train", "--multirun", "threads=1", "model=mlp", "optimizer.lr=1e-3,2e-3",
               "dataset=mnist", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert all(r["status"] == "completed" for r in summary(tmp_path / "sweep"))
    jobs = len(os.sched_getaffinity(0))  # one thread each: as many jobs as cores
    # the launcher's first line, without the dozen arguments of joblib.Parallel it listed
    assert f"] launching 2 jobs, {min(jobs, 2)} at a time\n" in proc.stdout and "Joblib" not in proc.stdout
    assert f"cpu threads 1 (threads=1, {jobs} usable cores, {jobs} process" in \
           (tmp_path / "sweep" / "1" / "train.log").read_text()


@needs_plugin("optuna_sweeper", "sweep")
def test_optuna_search_survives_a_crashing_trial(tmp_path: Path):
    # lr is either fine or diverges; with this sampler seed the first trial crashes and a later one completes.
    proc = cli("fmnist-train", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=5",
               "model=mlp", "dataset=mnist", "optimizer=sgd", "optimizer.momentum=0.0",
               "hydra.sweeper.params={optimizer.lr:'choice(0.01,1e12)'}", *FAST, "hydra.sweep.dir=sweep",
               cwd=tmp_path, check=False)
    rows = {r["job"]: r for r in summary(tmp_path / "sweep")}
    assert len(rows) == 3, proc.stdout + proc.stderr
    assert rows["0"]["status"] == "failed" and "NaN/inf" in rows["0"]["error"]
    assert any(r["status"] == "completed" for r in rows.values())
    assert "Failed experiment" in proc.stdout + proc.stderr  # Optuna was told the trial failed
    assert proc.returncode == 1
    # The search's last lines as the summary says a job, not Python's reprs ("Best value: 0.9666666666666667")
    assert "] best trial: optimizer.lr=0.01 optimizer.weight_decay=" in proc.stdout and "Best " not in proc.stdout
    assert re.search(r"\] best trial's validation accuracy: \d+\.\d\d%\n", proc.stdout), proc.stdout


def test_an_interval_for_the_default_sweeper_says_what_samples_it(tmp_path: Path):
    """Hydra's basic sweeper named only the sweep's type ("does not support sweep type : INTERVAL_SWEEP")."""
    proc = cli("fmnist-train", "--multirun", "model=mlp", "optimizer.lr=interval(1e-3,1e-2)", "hydra.sweep.dir=sweep",
               cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(
        "fmnist-train: error: optimizer.lr=interval(1e-3,1e-2): the default sweeper runs lists (a,b), range() and "
        "glob() only; an interval is sampled by a search: add hparams_search=optuna")
    assert not (tmp_path / "sweep").exists()


@needs_plugin("optuna_sweeper", "sweep")
def test_an_optuna_search_that_would_minimize_the_accuracy_is_refused(tmp_path: Path):
    """hydra/sweeper=optuna minimizes by default: it searched for the worst learning rate and called it best."""
    proc = cli("fmnist-train", "--multirun", "hydra/sweeper=optuna", "model=mlp", "optimizer.lr=interval(1e-3,1e-2)",
               "hydra.sweep.dir=sweep", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr == (
        "fmnist-train: error: hydra.sweeper.direction=minimize: the objective is the validation accuracy, which a "
        "search maximizes: add hydra.sweeper.direction=maximize (hparams_search=optuna sets it)\n")
    assert not (tmp_path / "sweep").exists()


@needs_plugin("optuna_sweeper", "sweep")
@pytest.mark.parametrize(("count", "expected"), [("n_trials=0", "the number of trials to run"),
                                                 ("n_trials=-1", "the number of trials to run"),
                                                 ("n_jobs=0", "the number of trials at once")])
def test_an_optuna_search_with_no_trials_or_none_at_once_is_refused(tmp_path: Path, count: str, expected: str):
    """Optuna's sweeper ran no trial and then raised 'No trials are completed yet' (n_jobs=0: ZeroDivisionError)."""
    proc = cli("fmnist-train", "--multirun", "hparams_search=optuna", "model=mlp", f"hydra.sweeper.{count}",
               "hydra.sweep.dir=sweep", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr == (
        f"fmnist-train: error: hydra.sweeper.{count} is not valid: expected {expected} (1 or more)\n")
    assert not (tmp_path / "sweep").exists()


def test_crashed_and_unreadable_jobs_are_reported_as_such(tmp_path: Path):
    """A job whose process died mid-run reads "crashed", a corrupt metrics.json "unreadable": never a traceback."""
    import json

    from fmnist.artifacts.sweep import collect

    cli("fmnist-train", "--multirun", "model=mlp", "optimizer.lr=1e-3,1e-2,3e-2", "dataset=mnist", *FAST,
        "hydra.sweep.dir=sweep", cwd=tmp_path)
    sweep = tmp_path / "sweep"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    metrics = json.loads((sweep / "1" / "metrics.json").read_text())
    metrics.update(status="running", pid=int(dead.stdout))  # what a job killed with -9 leaves behind
    (sweep / "1" / "metrics.json").write_text(json.dumps(metrics))
    (sweep / "2" / "metrics.json").write_text('{"status": "runn')
    rows = {r["job"]: r for r in collect(sweep)}
    assert rows["0"]["status"] == "completed"
    assert rows["1"]["status"] == "crashed" and "ended without recording" in rows["1"]["error"]
    assert rows["2"]["status"] == "unreadable" and "metrics.json" in rows["2"]["error"]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "summarize_sweep.py"), str(sweep)],
                          capture_output=True, text=True)
    assert "Traceback" not in proc.stderr and "| 1 | crashed |" in proc.stdout


def _job(sweep: Path, job: str, lr: str, val_acc: float) -> None:
    """A finished job's directory as training leaves it: Hydra's overrides and the run's metrics.json."""
    import json

    (sweep / job / ".hydra").mkdir(parents=True)
    (sweep / job / ".hydra" / "overrides.yaml").write_text(f"- model=mlp\n- optimizer.lr={lr}\n")
    (sweep / job / "metrics.json").write_text(json.dumps({
        "status": "completed", "best_val_acc": val_acc, "test": {"accuracy": val_acc}, "seconds": 1.0,
        "history": [{"epoch": 1, "val_acc": val_acc}]}))


def test_the_summary_is_drawn_again_only_when_its_rows_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The sweep's own last call follows its last job's: in a parallel sweep it imported matplotlib (~1 s)
    to draw the same chart again."""
    from fmnist.artifacts import plots, sweep

    drawn = []
    monkeypatch.setattr(plots, "plot_sweep", lambda rows, parameter, path: (drawn.append(len(rows)),
                                                                             path.write_bytes(b"png")))
    _job(tmp_path, "0", "0.001", 0.5)
    _job(tmp_path, "1", "0.003", 0.6)
    sweep.write_summary(tmp_path)
    sweep.write_summary(tmp_path)
    assert drawn == [2]
    _job(tmp_path, "2", "0.01", 0.7)  # a job that ended since
    sweep.write_summary(tmp_path)
    (tmp_path / "sweep.png").unlink()  # a file of the summary gone
    sweep.write_summary(tmp_path)
    assert drawn == [2, 3, 3]
    assert [r["job"] for r in summary(tmp_path)] == ["2", "1", "0"]
    monkeypatch.setattr(sweep, "_renderer_digest", lambda: "code that draws it otherwise")  # an upgrade, an edit
    sweep.write_summary(tmp_path)
    assert drawn == [2, 3, 3, 3]


def test_jobs_ending_together_write_the_summary_one_after_the_other(tmp_path: Path):
    """Each summary file is replaced whole, but two writers could still leave one's table beside the other's
    chart, the older one last: the writer that comes second reads the rows after the first has written."""
    import threading

    from fmnist.artifacts.atomic import taking_turns
    from fmnist.artifacts.sweep import SUMMARY_LOCK, write_summary

    _job(tmp_path, "0", "0.001", 0.5)
    with taking_turns(tmp_path / SUMMARY_LOCK):  # another job's process writing
        writer = threading.Thread(target=write_summary, args=(tmp_path,))
        writer.start()
        writer.join(1.0)
        assert writer.is_alive() and not (tmp_path / "sweep_summary.csv").exists()
        _job(tmp_path, "1", "0.003", 0.6)  # what the writer that holds the turn saw end
    writer.join(60)
    assert [r["job"] for r in summary(tmp_path)] == ["1", "0"]
    assert_real_png(tmp_path / "sweep.png")


def test_a_job_run_again_on_its_own_updates_its_row(tmp_path: Path):
    """The resume command a stopped job prints runs it as a plain run: the sweep's summary then follows it."""
    cli("fmnist-train", "--multirun", "model=mlp", "optimizer.lr=1e-3,2e-3", "dataset=mnist", "epochs=1",
        "batch_size=32", "progress=false", "hydra.sweep.dir=sweep", cwd=tmp_path)
    proc = cli("fmnist-train", "hydra.run.dir=sweep/1", "resume=auto", "epochs=2", cwd=tmp_path)
    assert {r["job"]: r["epochs"] for r in summary(tmp_path / "sweep")} == {"0": "1", "1": "2"}
    assert "sweep summary:" in proc.stdout + proc.stderr
    # The same sweep into the same folder again is refused before its first job, and changes nothing there
    # (it used to end with exit code 0 and the earlier runs summarized as its own); with resume=auto it goes on
    before = {p: p.read_bytes() for p in sorted((tmp_path / "sweep").rglob("*")) if p.is_file()}
    again = ("--multirun", "model=mlp", "optimizer.lr=1e-3,2e-3", "dataset=mnist", "batch_size=32", "progress=false",
             "hydra.sweep.dir=sweep")
    line = one_line_error(cli("fmnist-train", *again, "epochs=1", cwd=tmp_path, check=False))
    assert line.endswith("sweep/0 already holds a run (last.pt): continue it with resume=auto, or choose another "
                         "hydra.sweep.dir"), line
    assert {p: p.read_bytes() for p in sorted((tmp_path / "sweep").rglob("*")) if p.is_file()} == before
    # ... and a job it never ran starts there, saying so without the hint for a single run (resume=RUN_DIR)
    cli("fmnist-train", *(a.replace("2e-3", "2e-3,3e-3") for a in again), "epochs=2", "resume=auto", cwd=tmp_path)
    assert {r["job"]: r["epochs"] for r in summary(tmp_path / "sweep")} == {"0": "2", "1": "2", "2": "2"}
    started = (tmp_path / "sweep" / "2" / "train.log").read_text()
    assert "so a new run starts\n" in started and "resume=RUN_DIR" not in started, started


def test_a_summary_that_cannot_be_written_does_not_fail_the_rerun_job(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                     monkeypatch: pytest.MonkeyPatch):
    from fmnist.artifacts import sweep
    from fmnist.errors import UserError

    (tmp_path / "multirun.yaml").write_text("{}")
    (tmp_path / "1").mkdir()

    def full(sweep_dir: Path) -> None:
        raise UserError(f"could not write {sweep_dir / 'sweep_summary.md'}: no space left on device")

    monkeypatch.setattr(sweep, "write_summary", full)
    with caplog.at_level("WARNING", logger="fmnist"):
        sweep.refresh_after_rerun(tmp_path / "1")
    assert "the sweep summary was not updated: could not write" in caplog.text


PARALLEL = ["hydra.launcher.n_jobs=2"]  # the default launcher, two jobs at a time on any machine


@pytest.mark.parametrize("launcher, to", [
    (["hydra/launcher=basic"], "the sweep's process"),
    (PARALLEL, "the sweep's process"),
    (PARALLEL, "every process (a terminal's Ctrl-C)"),
])
def test_ctrl_c_during_a_sweep_leaves_a_summary_of_what_finished(tmp_path: Path, launcher: list[str], to: str):
    """One job at a time, or two side by side: running jobs save and say how to resume, later jobs never
    start, the summary is written and the sweep exits 130, with no traceback."""
    import json
    import signal
    import time

    exe = console_script("fmnist-train")
    proc = subprocess.Popen([exe, "--multirun", *launcher, "model=mlp", "dataset=mnist", "epochs=1,500,500,500",
                             "batch_size=32", "progress=false", "hydra.sweep.dir=sweep"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    second, third = (tmp_path / "sweep" / job / "metrics.json" for job in ("1", "2"))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        # Side by side: job 2 runs in the worker that ran job 0, so both workers are past their start-up
        # (artifacts/sweep.py leave_ctrl_c_to_the_sweep)
        if second.is_file() and json.loads(second.read_text() or "{}").get("history") and \
                (launcher != PARALLEL or third.is_file()):
            break
        time.sleep(0.05)
    if to.startswith("every"):
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert (tmp_path / "sweep" / "sweep_summary.csv").is_file(), out + err
    rows = {r["job"]: r for r in summary(tmp_path / "sweep")}
    assert rows["0"]["status"] == "completed"
    assert rows["1"]["status"] == "interrupted" and "resume" in rows["1"]["error"]
    assert rows.get("3", {"status": "not started"})["status"] == "not started"  # parallel: a folder, no metrics
    assert not (tmp_path / "sweep" / "3" / "last.pt").exists()
    assert ("to finish the sweep (stopped jobs resume, the others start): fmnist-train --multirun model=mlp "
            f"dataset=mnist epochs=1,500,500,500 batch_size=32 progress=false {' '.join(launcher)} "
            f"hydra.sweep.dir={tmp_path / 'sweep'} resume=auto\n") in out, out


def _loky_workers(parent: int) -> list[int]:
    """The process ids of joblib's worker processes that `parent` started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"popen_loky_posix" in command:
            found.append(int(stat.parent.name))
    return found


def test_ctrl_c_while_the_workers_start_stops_the_sweep_in_one_line(tmp_path: Path):
    """A terminal's Ctrl-C in the seconds the workers of a parallel sweep spend importing, before their jobs
    ignore SIGINT: no job starts, the summary says so and the sweep exits 130, with no traceback from any
    process (the workers start with SIGINT ignored: train/interrupt.py)."""
    import signal
    import time

    proc = subprocess.Popen([console_script("fmnist-train"), "--multirun", *PARALLEL, "model=mlp", "dataset=mnist",
                             "optimizer.lr=1e-3,2e-3", *FAST, "hydra.sweep.dir=sweep"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and len(_loky_workers(proc.pid)) < 2:
        time.sleep(0.01)
    time.sleep(0.2)  # the workers import joblib for a second or more before anything of fmnist runs there
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err + out, err
    assert {r["status"] for r in summary(tmp_path / "sweep")} == {"not started"}, out + err


@needs_plugin("submitit_launcher", "cluster")
def test_submitit_local_sweep_writes_its_jobs_and_the_summary(tmp_path: Path):
    """Hydra's submitit launcher (the SLURM preset's local twin) runs each job as its own submitted process."""
    cli("fmnist-train", "--multirun", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "model=mlp",
        "optimizer.lr=1e-3,2e-3", "dataset=mnist", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    rows = summary(tmp_path / "sweep")
    assert sorted(r["job"] for r in rows) == ["0", "1"] and all(r["status"] == "completed" for r in rows)
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "best.pt").is_file()
