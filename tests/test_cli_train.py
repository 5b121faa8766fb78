"""fmnist-train as a user runs it: artifacts, reproducibility, and every kind of bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import FAST, assert_real_png, cli, console_script, one_line_error

from fmnist.artifacts.checkpoint import load_checkpoint

ARTIFACTS = ("best.pt", "last.pt", "metrics.csv", "metrics.json", "curves.png", "confusion_matrix.png",
             ".hydra/config.yaml", "train.log")


def test_train_writes_every_artifact(trained_run: Path):
    for name in ARTIFACTS:
        assert (trained_run / name).is_file(), name
    assert "threads=auto" in (log := (trained_run / "train.log").read_text()) and "OMP_WAIT_POLICY=default" in log
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    assert metrics["test"]["samples"] == 100 and 0.5 < metrics["test"]["accuracy"] <= 1.0
    assert metrics["device"] in ("cpu", "cuda", "mps") and metrics["precision"] == "fp32"  # as trained_run asks
    assert metrics["compile"] == ("cudagraph" if metrics["device"] == "cuda" else "none")  # what compile=auto chose
    assert f"trained on {metrics['device']} in fp32" in (trained_run / "report.html").read_text()
    rows = list(csv.DictReader((trained_run / "metrics.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and float(rows[-1]["val_acc"]) > 0.3
    for png in ("curves.png", "confusion_matrix.png"):
        assert_real_png(trained_run / png)


def test_checkpoint_is_self_describing(trained_run: Path):
    ckpt = load_checkpoint(trained_run / "best.pt")
    assert ckpt["class_names"][0] == "T-shirt/top"
    assert ckpt["config"]["model"]["channels"] == [8, 16]
    assert ckpt["config"]["model"]["in_channels"] == 1  # interpolations resolved
    assert {"torch", "torchvision", "fmnist", "python"} <= set(ckpt["versions"])
    assert ckpt["metrics"]["test"]["accuracy"] == json.loads((trained_run / "metrics.json").read_text())["test"][
        "accuracy"]
    assert "optimizer" in ckpt and ckpt["epoch"] == ckpt["metrics"]["best_epoch"]


def test_final_line_names_accuracy_and_artifacts(tmp_path: Path):
    proc = cli("fmnist-train", "model=mlp", "dataset=mnist", *FAST, "hydra.run.dir=r", cwd=tmp_path)
    last = proc.stdout.strip().splitlines()[-1]
    assert "test accuracy" in last and str(tmp_path / "r") in last


def test_same_seed_same_metrics(tmp_path: Path):
    runs = []
    for name in ("a", "b"):
        # a fixed thread count: threads=auto's follows the CPU's other users, and CPU results its last bits
        cli("fmnist-train", "model=bn_cnn", "dataset=mnist", "seed=3", "threads=2", *FAST, f"hydra.run.dir={name}",
            cwd=tmp_path)
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert "OMP_WAIT_POLICY=PASSIVE)" in (tmp_path / "a" / "train.log").read_text()  # a fixed count sleeps
    strip = [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_s")} for r in runs
             for row in r["history"]]
    assert strip[:2] == strip[2:]
    assert runs[0]["test"]["accuracy"] == runs[1]["test"]["accuracy"]
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra", [
    ("dataset=cifar10", "model=feedforward", "optimizer=sgd", "scheduler=onecycle", "loss=nll", "batch_size=512"),
    ("dataset=mnist", "model=mlp", "data.loader=torchvision", "num_workers=0", "optimizer=adamw",
     "scheduler=cosine", "loss.label_smoothing=0.1", "dataset.augment.crop_padding=2",
     "loss.weight=[1,1,1,1,1,1,2,1,1,1]"),
])
def test_other_combinations_run_end_to_end(tmp_path: Path, extra: tuple[str, ...]):
    fast = [a for a in FAST if a.split("=")[0] not in {e.split("=")[0] for e in extra}]
    proc = cli("fmnist-train", *extra, *fast, "hydra.run.dir=r", cwd=tmp_path)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["test"]["samples"] == 100
    # A batch larger than the 225 CIFAR-10 training images is legal but said once; the usual batch is not.
    oversized = "batch_size=512 is more than the 225 training images: every epoch is one step of 225"
    assert (oversized in proc.stdout + proc.stderr) == ("batch_size=512" in extra)
    cli("fmnist-eval", "ckpt=r/best.pt", cwd=tmp_path)  # each setting is one conf/ passes (class weights too)


@pytest.mark.parametrize(("override", "expected"), [
    ("batch_size=0", "batch_size=0 is not valid: expected an integer in [1, 2^31)"),
    ("optimizer.lr=-1", "optimizer.lr=-1 is not valid: expected a number > 0"),
    ("epochs=abc", "epochs='abc' is not valid: expected an integer in [1, 1000000]"),
    ("threads=abc", "threads='abc' is not valid"),
    ("threads=-1", "threads=-1 is not valid"),
    ("seed=123456789012345678901234567890", "seed=123456789012345678901234567890 is not valid"),
    ("dataset.mean=[nan]", "dataset.mean=[nan] is not valid"),
    ("optimizer.lr=inf", "optimizer.lr=inf is not valid"),
    ("model=resnet", "model=resnet is not an option: choose one of bn_cnn, bn_cnn_wide, cnn, feedforward, mlp, "
                     "speednet"),
    ("model=cnnn", "model=cnnn is not an option: choose one of bn_cnn, bn_cnn_wide, cnn, feedforward, mlp, speednet "
                   "(did you mean cnn?)"),
    ("modle=cnn", "modle is not a config key (did you mean model?)"),
    ("optimizer.lrr=0.1", "optimizer.lrr is not a config key (did you mean optimizer.lr?)"),
    ("epochs=[", "cannot parse epochs=[: check its brackets and quotes"),
    ("hydra.run.dir=/proc/fmnist-cannot-be-here", "/proc/fmnist-cannot-be-here"),
    ("hydra.run.dir=/etc/passwd/run", "cannot use /etc/passwd/run as a directory: a file is in the way"),
    ("resume='~nobody_fmnist/run'", "resume=~nobody_fmnist/run: there is no checkpoint at ~nobody_fmnist/run"),
    ("model.channels=[8,16,32,64,128]", "error: model.channels=[8,16,32,64,128] has too many pooling blocks for "
                                        "28x28 images"),  # was "model: model.channels=[8, 16, ..."
    ("dataset.image_size=14", "dataset.image_size=14 does not describe Fashion-MNIST, whose images are 1x28x28 (they "
                              "are used as they are, not resized): leave dataset.image_size at 28"),
])
def test_bad_values_exit_2_with_one_line(tmp_path: Path, override: str, expected: str):
    proc = cli("fmnist-train", override, cwd=tmp_path, check=False)
    assert expected in one_line_error(proc)
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.pt"))


@pytest.mark.parametrize(("args", "says"), [
    (("-m", "model=mlp,cnn", "hydra.launcher.n_jobs=0", "hydra.sweep.dir=sweep"),
     "hydra.launcher.n_jobs=0 is not valid: expected the number of jobs at once (1 or more; -1: one per core"),
    pytest.param(("-m", "hydra/launcher=slurm", "model=mlp", "hydra.sweep.dir=sweep"),
                 "hydra/launcher=slurm submits the jobs to a SLURM cluster, but there is no srun on this machine's "
                 "PATH", marks=pytest.mark.skipif(bool(shutil.which("srun")), reason="a SLURM machine")),  # traceback
    (("-m", "model=mlp", "hydra.launcher.n_jobs=abc", "hydra.sweep.dir=sweep"),
     "hydra.launcher.n_jobs=abc is not valid: Value 'abc' of type 'str' could not be converted to Integer"),
    (("+experiment=fashion_speedrun",),
     "+experiment=fashion_speedrun: experiment is chosen in the defaults already; write experiment=fashion_speedrun "
     "(without +)"),
    (("+model=cnn",), "+model=cnn: model is chosen in the defaults already; write model=cnn (without +)"),
    (("logger=[csv,wandb]",), "logger=wandb is not an option: choose one of csv, mlflow, tensorboard"),
    (("scheduler=null",), "scheduler=null is not an option: choose one of cosine, none, onecycle, step"),  # traceback
    (("experiment=null",), "or leave experiment out (it is off by default)"),
    (("logger=null",), "logger=null is not an option: choose one of csv, mlflow, tensorboard, or a list, logger=[] "
                       "for none"),
    (("model=[mlp,cnn]",), "model=[mlp,cnn]: model takes one option (bn_cnn, bn_cnn_wide, cnn, feedforward, mlp, "
                           "speednet); to train each, sweep them: --multirun model=mlp,cnn"),  # merged both
    (("~model",), "~model: model cannot be left out: choose one of bn_cnn"),  # a traceback
    (("~logger",), "~logger: to train without any logger, write logger=[]"),
    (("=5",), "=5: an override needs a key, key=value"),  # a traceback
    (("model=mlp,cnn",), "model=mlp,cnn: to train each, sweep them: fmnist-train --multirun model=mlp,cnn"),
    (("optimizer.lr=1e-3,3e-3",), "optimizer.lr=1e-3,3e-3: a comma sweeps the values only with --multirun "
                                  "(fmnist-train --multirun optimizer.lr=1e-3,3e-3); a list is written "
                                  "optimizer.lr=[1e-3,3e-3], text optimizer.lr='1e-3,3e-3'"),  # Hydra's 1. 2. 3.
    (("dataset.root=~/data",), "dataset.root=~/data: Hydra reads this value only in quotes: write "
                               "dataset.root='~/data'"),  # "cannot parse ...; write them as key=value", which it was
    (("model.channels=[8,16",), "cannot parse model.channels=[8,16: check its brackets and quotes"),
    (("mlp",), "cannot parse mlp: an override is written key=value"),
    (("--config-name=eval", "epochs=1"), "--config-name=eval is fmnist-eval's config: run fmnist-eval, or leave "
                                         "--config-name out"),  # was "epochs is not a setting of the epochs chosen"
])
def test_hydra_errors_about_groups_and_the_launcher_say_what_to_write(tmp_path: Path, args: tuple[str, ...],
                                                                      says: str):
    """Hydra's words for these were its internals ('Multiple values for experiment. To override a value use
    override experiment: ...', 'Could not load logger/wandb', 'Error merging override', 'Could not delete'),
    group=null and ~model were tracebacks, and n_jobs=0 (joblib) or the SLURM launcher without SLURM (submitit)
    was a traceback after the sweep's folder existed."""
    assert says in one_line_error(cli("fmnist-train", *args, cwd=tmp_path, check=False))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("overrides", "hint"), [
    (("scheduler=cosine", "scheduler.T_mx=3"), " (did you mean scheduler.T_max?)"),
    (("scheduler=onecycle", "scheduler.T_mx=3"), ""),  # T_max is cosine's, not the chosen schedule's
    (("scheduler=onecycle", "scheduler.div_factor=3"), ""),  # not scheduler.interval, for the prefix they share
    (("optimzer.lr=1",), " (did you mean optimizer.lr?)"),
    (("--multirun", "model=mlp,cnn", "model.chanels=[8]"), " (did you mean model.channels?)"),  # each one swept
    (("experiment=fashion_speedrun", "model.widht=[8]"), " (did you mean model.widths?)"),  # speednet, its model
    (("model=bn_cnn_wide", "model.batch_nrm=true"), " (did you mean model.batch_norm?)"),  # from bn_cnn, extended
])
def test_a_mistyped_key_is_matched_among_the_keys_of_the_options_chosen(tmp_path: Path, overrides: tuple[str, ...],
                                                                       hint: str):
    key = overrides[-1].partition("=")[0]
    line = one_line_error(cli("fmnist-train", *overrides, cwd=tmp_path, check=False))
    assert f"{key} is not a config key{hint}; to add" in line, line


def test_a_key_added_where_fmnist_reads_key_by_key_is_refused(tmp_path: Path):
    """dataset, its augment and data are read key by key: a key added there would be ignored
    (+dataset.limit=5 trained on every image) or fail as an unexpected argument (+dataset.augment.hflp=true
    was a traceback). Refused in one line before a run directory exists; nor is adding it with + suggested."""
    for override, says in [
        ("dataset.limit=5", "error: dataset.limit is not a config key\n"),
        ("+dataset.limit=5", "dataset.limit is not a setting fmnist-train reads: drop it; dataset has augment, "
                             "channels, classes, download, image_size, mean, name, num_classes, root, std, "
                             "val_fraction"),
        ("+dataset.augment.hflp=true", "dataset.augment.hflp is not a setting fmnist-train reads (did you mean "
                                       "dataset.augment.hflip?): drop it; dataset.augment has crop_padding, "
                                       "erase, hflip, rotation"),
        ("+data.workers=2", "data.workers is not a setting fmnist-train reads: drop it; data has loader"),
    ]:
        proc = cli("fmnist-train", override, cwd=tmp_path, check=False)
        assert says in one_line_error(proc) + "\n", (override, proc.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("tool", "args", "code"), [
    ("train", ["--help"], 0), ("train", ["--cfg", "job"], 0), ("train", ["batch_size=0"], 2),
    ("train", ["modle=cnn"], 2), ("eval", ["--help"], 0), ("predict", ["index=-1"], 2),
    ("eval", ["ckpt=missing.pt"], 2), ("predict", ["image=missing.png"], 2), ("eval", [], 2),
    ("eval", ["ckpt='~nobody_fmnist/best.pt'"], 2), ("train", ["dataset.root=nowhere", "dataset.download=false"], 2),
    ("train", ["--multirun", "model=mlp,resnet"], 2), ("train", ["-m", "model=mlp,cnn", "modle=3"], 2),
    ("train", ["-m", "model=mlp,cnn", "batch_size=0"], 2),
    ("train", ["experiment=fashion_speedrun", "model=cnn"], 2), ("train", ["resume=nowhere"], 2),
    ("predict", ["--version"], 0),
    ("train", ["dataset=cifar10", "dataset.channels=1", "dataset.mean=[0.5]", "dataset.std=[0.5]"], 2),
    ("train", ["dataset.num_classes=2", "dataset.classes=[a,b]"], 2),  # refused once the labels were read
    ("train", ["-m", "model=mlp,cnn", "dataset.image_size=32"], 2),
])
def test_help_cfg_and_config_errors_need_neither_torch_nor_a_run_directory(tmp_path: Path, tool: str,
                                                                         args: list[str], code: int):
    """What answers at once: nothing heavy is imported and no run directory appears."""
    script = (f"import sys; sys.argv = ['fmnist-{tool}', *{args!r}]\n"
              f"from fmnist.cli.{tool} import main\n"
              "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\nelse:\n    code = 0\n"
              "heavy = sorted(m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules)\n"
              "print('HEAVY', heavy, 'CODE', code)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert f"HEAVY [] CODE {code}" in proc.stdout, proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []
    if code == 2:
        assert len(proc.stderr.strip().splitlines()) == 1 and "error:" in proc.stderr


def test_version_names_fmnist_and_what_it_runs_on(tmp_path: Path):
    """--version answered "Hydra 1.3.8", Hydra's own version, for each of fmnist's commands."""
    from importlib.metadata import version

    from fmnist import __version__

    lines = cli("fmnist-eval", "--version", cwd=tmp_path).stdout.splitlines()
    assert lines[0] == f"fmnist-eval {__version__}" and f"torch {version('torch')}, " in lines[1]


def test_a_config_dir_of_ones_own_is_checked_before_a_run_directory_too(tmp_path: Path):
    """--config-dir adds the user's options (a model extending fmnist's, say): a rejected config is still one
    line with no run directory (the check before the run was skipped for it), and a good one trains."""
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "tiny.yaml").write_text("defaults:\n  - mlp\nhidden: [16]\n")
    (tmp_path / "work").mkdir()
    own = ["--config-dir", str(tmp_path / "conf"), "model=tiny"]
    assert "batch_size=0 is not valid" in one_line_error(cli("fmnist-train", *own, "batch_size=0",
                                                             cwd=tmp_path / "work", check=False))
    assert list((tmp_path / "work").iterdir()) == []
    line = one_line_error(cli("fmnist-train", *own, "model.hiden=[3]", cwd=tmp_path / "work", check=False))
    assert "model.hiden is not a config key (did you mean model.hidden?);" in line  # the keys of its own option too
    cli("fmnist-train", *own, *FAST, "hydra.run.dir=r", cwd=tmp_path / "work")
    assert yaml.safe_load((tmp_path / "work" / "r" / ".hydra" / "config.yaml").read_text())["model"]["hidden"] == [16]
    # --help only shows: it went on to look for the data (and tried to download it) with --config-dir
    shown = cli("fmnist-train", "--help", *own, "dataset.root=nowhere", "dataset.download=false", cwd=tmp_path)
    assert "model: bn_cnn, bn_cnn_wide, cnn, feedforward, mlp, speednet, tiny" in shown.stdout
    # a sweep's glob() over its options too: the check before the sweep listed conf/'s alone ("matches none")
    line = one_line_error(cli("fmnist-train", "--config-dir", str(tmp_path / "conf"), "-m", "model=glob(ti*)",
                              "batch_size=0", cwd=tmp_path / "work", check=False))
    assert line.endswith("batch_size=0 is not valid: expected an integer in [1, 2^31)")


NET_OF_ONES_OWN = """
from torch import nn


class Net(nn.Module):  # no log_probs argument, as fmnist's own classes have
    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))

    def forward(self, x):
        return self.net(x)
"""


def test_a_model_class_of_ones_own_trains_and_a_wrong_one_is_refused_before_a_run_directory(tmp_path: Path):
    """`_target_: mypkg.Net` in a --config-dir option: a target that does not import, is no torch.nn.Module, has
    nothing to train or does not take its keys (by its signature or when called) is one line with no run
    directory (a class that was no module ended in a traceback); a plain nn.Module of the user's own trains with
    cross_entropy."""
    conf, work = tmp_path / "conf" / "model", tmp_path / "work"
    conf.mkdir(parents=True)
    work.mkdir()
    (tmp_path / "mynets.py").write_text(NET_OF_ONES_OWN)
    sizes = "in_channels: ${dataset.channels}\nimage_size: ${dataset.image_size}\nnum_classes: ${dataset.num_classes}\n"
    (conf / "mine.yaml").write_text("_target_: mynets.Net\n" + sizes)
    refused = {"absent": ("nowhere.Net", "model: cannot import nowhere.Net: No module named 'nowhere'"),
               "odict": ("collections.OrderedDict", "model: collections.OrderedDict is a class, but not a "
                                                    "torch.nn.Module"),
               "nothing": ("torch.nn.Identity", "model: torch.nn.Identity has no weights to train"),
               "mistyped": ("torch.nn.Linear", "model: torch.nn.Linear does not take these settings ("),
               "called": ("torchvision.models.resnet18",  # takes **kwargs: only a call finds them wrong
                          "model: ResNet.__init__() got an unexpected keyword argument 'in_channels'")}
    for option, (target, _) in refused.items():
        (conf / f"{option}.yaml").write_text(f"_target_: {target}\n" +
                                             (sizes if option in ("mistyped", "called") else ""))
    own = ("--config-dir", str(tmp_path / "conf"), "dataset=mnist", *FAST, "hydra.run.dir=r")
    for option, (_, said) in refused.items():
        line = one_line_error(cli("fmnist-train", *own, f"model={option}", cwd=work, check=False))
        assert line.startswith(f"fmnist-train: error: {said}"), line
        assert list(work.iterdir()) == []

    def fresh(*args: str) -> subprocess.CompletedProcess[str]:  # PYTHONPATH is read as Python starts: no fork
        env = {**os.environ, "PYTHONPATH": str(tmp_path), "HYDRA_FULL_ERROR": "0"}
        return subprocess.run([console_script("fmnist-train"), *own, "model=mine", *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)

    line = one_line_error(fresh("loss=nll"))  # nll asks the model for log-probabilities, which Net cannot give
    assert "model: mynets.Net does not take these settings (got an unexpected keyword argument 'log_probs')" in line
    assert list(work.iterdir()) == []
    proc = fresh()
    assert proc.returncode == 0, proc.stderr
    assert json.loads((work / "r" / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("code", [2, 130])
def test_nothing_logs_after_the_line_that_ends_a_command(code: int):
    """torch logs its FakeTensor cache statistics at INFO from an exit handler; where a Ctrl-C came while
    torch._dynamo loaded, they followed `fmnist-eval: interrupted` on the console (three lines)."""
    script = ("import atexit, logging\nfrom fmnist.cli.common import fail\nlogging.basicConfig(level=logging.INFO)\n"
              "atexit.register(lambda: logging.getLogger('torch._subclasses.fake_tensor').info('cache stats'))\n"
              f"fail('fmnist-eval', 'interrupted', {code})\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    said = "fmnist-eval: error: interrupted" if code == 2 else "fmnist-eval: interrupted"
    assert (proc.returncode, proc.stderr) == (code, said + "\n")


@pytest.mark.parametrize(("args", "code"), [((), 0), (("dataset.root=nowhere",), 2)])
def test_a_command_that_loaded_torch_ends_with_all_it_wrote(tmp_path: Path, args: tuple[str, ...], code: int):
    """Such a command ends without the interpreter's module teardown (1.2-1.5 s with torch): in a fresh process
    whose output goes to files (block-buffered), every line, exit handlers and the exit code are as they would be."""
    script = ("import atexit, runpy, sys\natexit.register(print, 'EXIT HANDLER RAN')\n"
              f"sys.argv = [{console_script('fmnist-train')!r}, 'model=mlp', 'dataset=mnist', *{[*FAST, *args]!r},"
              " 'hydra.run.dir=run']\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, stdout=out, stderr=err,
                              timeout=300)
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert proc.returncode == code, stdout + stderr
    assert stdout.endswith("EXIT HANDLER RAN\n")
    if code == 0:
        assert "test accuracy" in (tmp_path / "run" / "train.log").read_text().splitlines()[-1]
        assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"
    else:
        assert stderr.strip().splitlines()[-1].startswith("fmnist-train: error: MNIST not found")


def test_unknown_options_and_keys_in_eval_and_predict_are_one_line_too(tmp_path: Path):
    assert "splt is not a config key (did you mean split?)" in one_line_error(
        cli("fmnist-eval", "splt=val", cwd=tmp_path, check=False))
    assert "topkk is not a config key (did you mean topk?)" in one_line_error(
        cli("fmnist-predict", "topkk=3", cwd=tmp_path, check=False))
    for tool, group in (("fmnist-eval", "dataset=null"), ("fmnist-predict", "model=null"), ("fmnist-eval", "~dataset")):
        # the first two were Hydra's traceback, the third its 'Could not delete'
        assert (f"{group.lstrip('~').split('=')[0]} is not a setting of {tool}: it comes from the checkpoint's "
                f"training config") in one_line_error(cli(tool, group, cwd=tmp_path, check=False))


def test_missing_dataset_offline_says_what_and_where(tmp_path: Path):
    proc = cli("fmnist-train", "dataset=mnist", f"dataset.root={tmp_path / 'nowhere'}", cwd=tmp_path, check=False)
    line = one_line_error(proc)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in line and "train-images-idx3-ubyte" in line
    assert "download failed" in line
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made a run directory


def test_files_beside_the_folder_they_belong_in_are_pointed_to_not_downloaded(tmp_path: Path):
    """dataset.root naming the raw folder itself, or the files without MNIST/raw/ around them: said so, before
    any download (one would fetch what is here)."""
    from helpers import write_mnist_like

    write_mnist_like(tmp_path / "data", "MNIST", seed=1)
    raw = tmp_path / "data" / "MNIST" / "raw"
    proc = cli("fmnist-train", "dataset=mnist", f"dataset.root={raw}", cwd=tmp_path, check=False)
    assert one_line_error(proc).endswith(f"(.gz or unpacked); dataset.root names the files' own folder: set "
                                         f"dataset.root={tmp_path / 'data'}, which holds MNIST/raw/")
    shutil.move(raw, tmp_path / "flat")
    proc = cli("fmnist-train", "dataset=mnist", f"dataset.root={tmp_path / 'flat'}", cwd=tmp_path, check=False)
    assert one_line_error(proc).endswith(f"they are in {tmp_path / 'flat'}: move them into "
                                         f"{tmp_path / 'flat' / 'MNIST' / 'raw'}")
    assert "download" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "flat"]


def test_paths_typed_are_read_from_where_the_command_started_under_hydra_job_chdir(tmp_path: Path):
    """hydra.job.chdir=true moves the job into its run directory: dataset.root=data (typed relative to the shell)
    was then looked for inside the run directory, after the check before the run had found it."""
    (tmp_path / "data").symlink_to(os.environ["FMNIST_DATA"])
    cli("fmnist-train", "model=mlp", *FAST, "dataset.root=data", "hydra.job.chdir=true", "hydra.run.dir=r",
        "logger=[csv,tensorboard]", "logger.tensorboard.log_dir=tb", cwd=tmp_path)
    assert (tmp_path / "r" / "best.pt").is_file() and list((tmp_path / "tb").iterdir())
    cli("fmnist-eval", "ckpt=r", "out_dir=ev", "hydra.job.chdir=true", cwd=tmp_path)
    assert (tmp_path / "ev" / "eval.json").is_file()


@pytest.mark.parametrize(("args", "says"), [
    (("device=cuda",), "device=cuda was asked for, but"),
    (("precision=fp16",), "precision=fp16 needs a CUDA device (device is cpu)"),
    (("compile=cudagraph", "scheduler=none"), "compile=cudagraph needs a CUDA device (device is cpu)"),
])
def test_cuda_where_there_is_none(tmp_path: Path, args: tuple[str, ...], says: str):
    """Refused before the run starts, as a rejected config is: its one line only, and no run directory."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = cli("fmnist-train", "model=mlp", *args, cwd=tmp_path, check=False)
    assert says in one_line_error(proc)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_model_larger_than_the_memory_is_refused_in_one_line(tmp_path: Path):
    """64 layers of 65,536 units: every value valid, 270 billion parameters, an allocator's traceback or the
    OOM killer if built."""
    hidden = f"model.hidden=[{','.join(['65536'] * 64)}]"
    line = one_line_error(cli("fmnist-train", "model=mlp", hidden, *FAST, "hydra.run.dir=run", cwd=tmp_path,
                              check=False))
    assert ("the model has 270,639,169,546 parameters: its weights, gradients and optimizer state alone need "
            "4032.8 GiB") in line
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(("override", "expected"), [
    ("+optimizer.amsgrad=maybe", "fmnist-train: error: optimizer: its first step fails on a stand-in weight"),
    ("+loss.ignore_index=abc", "fmnist-train: error: loss: on stand-in outputs (TypeError:"),
    ("+scheduler._target_=collections.OrderedDict", "fmnist-train: error: scheduler: 'Adam' object is not iterable"),
])
def test_a_setting_only_torch_checks_is_refused_before_any_data_in_one_line(tmp_path: Path, override: str,
                                                                           expected: str):
    """Every rule passes these `+` keys; torch refuses them at the first training step, which was a traceback.
    A single run refuses them before its run directory exists; a sweep's job as it starts, whose log then ends
    with the same line, not with its last news before the error."""
    proc = cli("fmnist-train", "model=mlp", override, *FAST, "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert one_line_error(proc).startswith(expected)
    assert list(tmp_path.iterdir()) == []
    proc = cli("fmnist-train", "--multirun", "model=mlp", override, *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path,
               check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads((tmp_path / "sweep" / "0" / "metrics.json").read_text())["status"] == "failed"
    line = (tmp_path / "sweep" / "0" / "train.log").read_text().splitlines()[-1]
    assert line.split("] ", 1)[1].startswith(expected.replace("fmnist-train: error:", "job 0 failed:")), line


def test_nan_loss_stops_with_a_clear_message(tmp_path: Path):
    proc = cli("fmnist-train", "model=mlp", "optimizer=sgd", "optimizer.lr=1e12", "optimizer.momentum=0.0", *FAST,
               cwd=tmp_path, check=False)
    assert "NaN/inf" in one_line_error(proc)


def test_help_shows_groups_and_options(tmp_path: Path):
    out = cli("fmnist-train", "--help", cwd=tmp_path).stdout
    assert "model: bn_cnn, bn_cnn_wide, cnn, feedforward, mlp, speednet" in out
    assert "dataset: cifar10, fashion, mnist" in out
    assert "optimizer: adam, adamw, rmsprop, sgd" in out
    assert "launcher" not in out and "hydra_logging" not in out  # Hydra's own groups: --hydra-help
    assert out.index("== Config ==") < out.index("epochs: 10") < out.index("Tab completion")


@pytest.mark.parametrize("tool", ["fmnist-eval", "fmnist-predict"])
def test_eval_and_predict_offer_only_their_own_settings(tmp_path: Path, tool: str):
    """conf/ holds the training groups too; eval and predict take the model and its training config from the
    checkpoint, so their help lists no groups and choosing one is an error that says so."""
    out = cli(tool, "--help", cwd=tmp_path).stdout
    assert "ckpt: null" in out and "Configuration groups" not in out and "model:" not in out
    for override in ("model=cnn", "optimizer.lr=0.1", "dataset.classes=[a,b]"):
        proc = cli(tool, override, cwd=tmp_path, check=False)
        key = override.partition("=")[0]
        assert f"{key} is not a setting of {tool}: it comes from the checkpoint" in one_line_error(proc)
    assert "did you mean" not in one_line_error(cli(tool, "modle=cnn", cwd=tmp_path, check=False))
    assert "is not a config key" in one_line_error(cli(tool, "hydra.no_such_key=1", cwd=tmp_path, check=False))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("tool", "own", "foreign"), [
    ("fmnist-train", {"model=", "optimizer=", "epochs=", "dataset."}, set()),
    ("fmnist-eval", {"ckpt=", "split=", "dataset."}, {"model=", "optimizer=", "dataset=", "logger="}),
    ("fmnist-predict", {"ckpt=", "image=", "topk="}, {"model=", "scheduler=", "experiment="}),
])
def test_tab_completion_offers_each_command_its_own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             tool: str, own: set[str], foreign: set[str]):
    """What `eval "$(TOOL -sc install=bash)"` asks on a tab: the training groups are folders of the config
    directory the three commands share, yet only fmnist-train may choose them."""
    monkeypatch.setenv("COMP_LINE", f"{tool} ")
    words = set(cli(tool, "-sc", "query=bash", cwd=tmp_path).stdout.split())
    assert own <= words and not foreign & words
    monkeypatch.setenv("COMP_LINE", f"{tool} mo")
    assert ("model=" in cli(tool, "-sc", "query=fish", cwd=tmp_path).stdout.split("\n")) == (tool == "fmnist-train")


def test_help_shows_the_config_its_overrides_compose(tmp_path: Path):
    out = cli("fmnist-train", "--help", "experiment=fashion_best", "epochs=7", cwd=tmp_path).stdout
    assert "epochs: 7" in out and "pool_before_norm: true" in out and "stem_stride: 1" in out
    assert "in_channels: ${dataset.channels}" in out  # as Hydra prints it: unresolved, unless --resolve
    assert "in_channels: 1" in cli("fmnist-train", "--help", "--resolve", cwd=tmp_path).stdout
    # a sweep's: its first job's (it was "to train each, sweep them: fmnist-train --multirun", -m given)
    out = cli("fmnist-train", "-m", "model=mlp,cnn", "epochs=3,4", "--help", cwd=tmp_path).stdout
    assert "_target_: fmnist.models.MLP" in out and "epochs: 3" in out
    assert not list(tmp_path.iterdir())  # no run directory


def test_compile_torch_trains_and_reports_its_warmup_apart(tmp_path: Path):
    """torch.compile on the CPU through the CLI; the compilation is logged and recorded as one-time."""
    proc = cli("fmnist-train", "model=mlp", "dataset=mnist", "compile=torch", *FAST, "hydra.run.dir=r", cwd=tmp_path)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    first, second = metrics["history"]
    assert 0 < first["warmup_s"] < first["seconds"] and second["warmup_s"] == 0
    assert "one-time torch warm-up" in proc.stdout + proc.stderr
    assert metrics["test"]["accuracy"] > 0.5


def test_bf16_autocast_on_the_cpu(tmp_path: Path):
    """precision=bf16 (what README recommends for conv models on CPUs with AMX) trains and tests on the CPU."""
    proc = cli("fmnist-train", "model=cnn", "model.channels=[8,16]", "model.hidden=[32]", "dataset=fashion",
               "precision=bf16", *FAST, "hydra.run.dir=r", cwd=tmp_path)
    assert "bfloat16" in proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["test"]["accuracy"] > 0.5
    assert metrics["precision"] == "bf16" == load_checkpoint(tmp_path / "r" / "best.pt")["precision"]


@pytest.mark.parametrize("path", ["/runs/plain", "/runs/my run, v2", "/runs/it's [a] {b}=c", "C:\\runs\\x\\",
                                  "/runs/a\\'b\\\\", "runs/a+b@c%d:e-f.g", "null", "1e-3", "true"])
def test_a_path_fmnist_hands_hydra_is_read_back_as_it_is(path: str):
    """Where fmnist tells Hydra to write (a resumed run's directory), in Hydra's own override grammar."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from fmnist.paths import quoted_override

    override = OverridesParser.create().parse_overrides([quoted_override("hydra.run.dir", path)])[0]
    assert (override.key_or_group, override.value()) == ("hydra.run.dir", path)


def test_resume_auto_in_a_new_directory_says_that_a_new_run_starts(tmp_path: Path):
    """`fmnist-train resume=auto` alone reads as "continue my run", but Hydra names a new directory for it."""
    proc = cli("fmnist-train", "model=mlp", *FAST, "resume=auto", "hydra.run.dir=r", cwd=tmp_path)
    assert f"resume=auto: no last.pt in {tmp_path / 'r'}, so a new run starts" in proc.stdout


def test_a_final_test_with_flips_the_training_never_showed_says_so(tmp_path: Path):
    """Valid, and it costs accuracy (the cnn on Fashion-MNIST: -7 points): said before the run, not left to find."""
    proc = cli("fmnist-train", "model=mlp", "dataset=fashion", "epochs=1", "batch_size=32", "progress=false",
               "tta=flip", "hydra.run.dir=r", cwd=tmp_path)
    assert ("tta=flip averages in mirror images, which a model trained with dataset.augment.hflip=false never saw"
            in proc.stdout + proc.stderr)


def test_more_threads_than_cores_is_said(tmp_path: Path):
    """threads=99 on 2 cores trained the cnn at 55 samples/s (threads=auto: 1,855), with no word of why."""
    from fmnist.config import usable_cores

    cores = usable_cores()
    proc = cli("fmnist-train", "model=mlp", *FAST, f"threads={cores + 1}", "hydra.run.dir=r", cwd=tmp_path)
    said = (f"threads={cores + 1} x 1 process side by side is more threads than the {cores} usable cores: they take "
            "turns on the cores")
    assert said in proc.stdout + proc.stderr and said in (tmp_path / "r" / "train.log").read_text()
    proc = cli("fmnist-train", "model=mlp", *FAST, f"threads={cores}", "hydra.run.dir=s", cwd=tmp_path)
    assert "usable cores: they take turns" not in proc.stdout + proc.stderr


def test_run_and_sweep_directories_typed_with_a_tilde_are_made_in_the_home_directory(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch):
    """Hydra reads a ~ only in quotes, where the shell leaves it alone: Hydra made a folder named ~ in the
    working directory. (And what fmnist adds to the command line went after a trailing flag: argparse's
    'unrecognized arguments'.)"""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (work := tmp_path / "work").mkdir()
    cli("fmnist-train", "model=mlp", *FAST, "hydra.run.dir='~/runs/a'", cwd=work)
    assert json.loads((tmp_path / "home" / "runs" / "a" / "metrics.json").read_text())["status"] == "completed"
    # a flag after the overrides, as people type it: what fmnist adds must join the overrides, not follow the flag
    cli("fmnist-train", "model=mlp", *FAST, "hydra.sweep.dir='~/sweep'", "hydra/launcher=basic", "--multirun",
        cwd=work)
    assert (tmp_path / "home" / "sweep" / "0" / "best.pt").is_file()
    assert list(work.iterdir()) == []
    cli("fmnist-train", "epochs=3", f"resume={tmp_path / 'home' / 'runs' / 'a'}", "--run", cwd=work)  # adds two
    metrics = json.loads((tmp_path / "home" / "runs" / "a" / "metrics.json").read_text())
    assert len(metrics["history"]) == 3 and list(work.iterdir()) == []
