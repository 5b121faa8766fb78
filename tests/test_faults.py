"""Training that survives faults, tested through the real CLI: kill -9, SIGTERM/SIGINT, torn writes, NaN, disk."""

from __future__ import annotations

import errno
import json
import os
import random
import shlex
import signal
import subprocess
import time
import weakref
from pathlib import Path
from typing import BinaryIO

import pytest
import torch
from helpers import cli, console_script, one_line_error, settings

from fmnist.artifacts import atomic, inputs
from fmnist.artifacts import checkpoint as checkpoint_module
from fmnist.artifacts.checkpoint import load_checkpoint, save_checkpoint
from fmnist.errors import UserError
from fmnist.paths import user_path

# A recipe that uses every source of randomness: shuffling, augmentation and dropout.
RECIPE = ("model=mlp", "dataset=mnist", "epochs=4", "batch_size=16", "seed=11", "progress=false",
          "dataset.augment.crop_padding=2", "dataset.augment.hflip=true", "checkpoint_every_steps=2",
          "threads=1")  # a fixed count: CPU results depend on it in their last bits, and threads=auto's varies
TIMING = ("seconds", "samples_per_s", "warmup_s")


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    exe = console_script("fmnist-train")
    return subprocess.Popen([str(exe), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_new_checkpoint(path: Path, after: float, proc: subprocess.Popen[str], timeout: float = 120) -> bool:
    """Until `path` is newer than `after`; False if the process ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.stat().st_mtime > after:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint at {path} within {timeout}s")


def same_run(a: Path, b: Path) -> None:
    for name in ("last.pt", "best.pt"):
        wa, wb = load_checkpoint(a / name)["model"], load_checkpoint(b / name)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{name} weights differ"
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    strip = lambda m: [{k: v for k, v in row.items() if k not in TIMING} for row in m["history"]]  # noqa: E731
    assert strip(ma) == strip(mb)
    assert ma["test"] == mb["test"] and ma["best_epoch"] == mb["best_epoch"]


# The torchvision DataLoader path (in-process loading) resumes bit-identically without augmentation.
TORCHVISION = ("data.loader=torchvision", "num_workers=0", "dataset.augment.crop_padding=0",
               "dataset.augment.hflip=false")


@pytest.mark.parametrize("extra", [(), TORCHVISION], ids=["tensor", "torchvision"])
def test_kill_9_at_random_points_then_resume_is_bit_identical(tmp_path: Path, extra: tuple[str, ...]):
    recipe = (*RECIPE, *extra)
    cli("fmnist-train", *recipe, "hydra.run.dir=straight", cwd=tmp_path)
    rng = random.Random(1234)
    run, kills = tmp_path / "killed", 0
    last = run / "last.pt"
    for attempt in range(8):
        again = ("resume=auto",) if attempt else ()
        proc = start(*recipe, *again, "hydra.run.dir=killed", cwd=tmp_path)
        if kills < 3:
            before = last.stat().st_mtime if last.exists() else 0.0
            if wait_for_new_checkpoint(last, before, proc):
                time.sleep(rng.uniform(0.0, 0.3))
                proc.send_signal(signal.SIGKILL)
                kills += 1
        out, err = proc.communicate(timeout=300)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err
        load_checkpoint(last)  # whatever the instant of the kill, last.pt is whole
    assert proc.returncode == 0 and kills >= 2, f"{kills} kills; {err}"
    assert "resuming" in out
    same_run(tmp_path / "straight", run)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_last_and_resume_finishes(tmp_path: Path, sig: signal.Signals, code: int):
    recipe = (*RECIPE[:2], "epochs=300", *RECIPE[3:])
    run = tmp_path / "my run, v2"  # the command it prints must paste as it is, whatever the path holds
    proc = start(*recipe, "hydra.run.dir='my run, v2'", cwd=tmp_path)
    assert wait_for_new_checkpoint(run / "last.pt", 0.0, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"stopped by {sig.name}" in err and "Traceback" not in err
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["metrics"]["status"] == "interrupted"
    done = ckpt["epoch"]
    page = (run / "report.html").read_text()  # the page says so, with the curves so far
    assert 'class="status interrupted"' in page and f"stopped by {sig.name}" in page
    assert ("data:image/png" in page) == (done > 0)
    printed = shlex.split(err.split("Resume with: ")[1].splitlines()[0])
    assert printed[0] == "fmnist-train" and printed[-1] == "resume=auto", err
    cli(*printed, f"epochs={done + 1}", cwd=tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["history"]) == done + 1


def test_resume_from_a_run_directory_continues_there(tmp_path: Path):
    cli("fmnist-train", *RECIPE[:2], "epochs=1", *RECIPE[3:], "hydra.run.dir=first", cwd=tmp_path)
    (tmp_path / "first" / "epoch1.pt").write_bytes((tmp_path / "first" / "last.pt").read_bytes())
    begun = (tmp_path / "first" / ".hydra" / "config.yaml").read_bytes()
    proc = cli("fmnist-train", f"resume={tmp_path / 'first'}", "epochs=2", "progress=false", cwd=tmp_path)
    assert "resuming" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].endswith(f"artifacts in {tmp_path / 'first'}")
    history = json.loads((tmp_path / "first" / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    # Hydra's side of it goes on there too: the log in the run's train.log, no directory under outputs/, and
    # .hydra/ still the config the run was begun with (the resume command composes the defaults, model=cnn)
    assert "epoch 2/2" in (tmp_path / "first" / "train.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first"]
    assert (tmp_path / "first" / ".hydra" / "config.yaml").read_bytes() == begun
    proc = cli("fmnist-train", f"resume={tmp_path / 'first'}", "epochs=3", "hydra.run.dir=elsewhere", cwd=tmp_path,
               check=False)
    assert "continues the run in" in one_line_error(proc) and not (tmp_path / "elsewhere").exists()
    # An older checkpoint of the run continues there only over the later state: refused, the run kept as it was
    names = ("best.pt", "last.pt", "metrics.json", "metrics.csv")
    before = {name: (tmp_path / "first" / name).read_bytes() for name in names}
    proc = cli("fmnist-train", f"resume={tmp_path / 'first' / 'epoch1.pt'}", "epochs=3", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(
        f"fmnist-train: error: {tmp_path / 'first' / 'epoch1.pt'} has 1 epoch done, behind "
        f"{tmp_path / 'first' / 'last.pt'} (2 epochs done)"), proc.stderr
    assert {name: (tmp_path / "first" / name).read_bytes() for name in names} == before
    (tmp_path / "branch").mkdir()  # what the refusal says to do instead
    (tmp_path / "branch" / "epoch1.pt").write_bytes((tmp_path / "first" / "epoch1.pt").read_bytes())
    cli("fmnist-train", f"resume={tmp_path / 'branch' / 'epoch1.pt'}", "epochs=2", "progress=false", cwd=tmp_path)
    branched = json.loads((tmp_path / "branch" / "metrics.json").read_text())["history"]
    assert [row["val_acc"] for row in branched] == [row["val_acc"] for row in history]  # the same run, re-done


def test_resume_alone_continues_the_run_as_it_was(tmp_path: Path):
    """`resume=auto` alone, as a stopped run prints it: the run's epochs, test-time augmentation and NaN policy
    stay its own, not the command's defaults; a key the command names changes."""
    proc = cli("fmnist-train", *RECIPE[:2], "epochs=1", "tta=flip", "on_nan=skip_batch", "progress=false",
               "dataset.augment.hflip=true", "hydra.run.dir=run", cwd=tmp_path)
    # Valid on MNIST, and said: a mirrored digit is no digit of its class (this test's digits are stand-ins)
    assert "dataset.augment.hflip=true and tta=flip mirror the images" in proc.stdout + proc.stderr
    cli("fmnist-train", "hydra.run.dir=run", "resume=auto", "progress=false", cwd=tmp_path)
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["epoch"] == 1 and ckpt["config"]["on_nan"] == "skip_batch", ckpt["config"]
    # Hydra's record stays the run's (this command alone composes the defaults: model=cnn, fashion)
    assert "model=mlp" in (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["tta"] == "flip"
    cli("fmnist-train", "hydra.run.dir=run", "resume=auto", "epochs=2", "tta=none", "progress=false", cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["test"]["tta"] == "none"
    # Other keys it names must be the run's own (a sweep run again with resume=auto repeats its jobs' values):
    proc = cli("fmnist-train", "hydra.run.dir=run", "resume=auto", *RECIPE[:2], "optimizer.lr=0.5", cwd=tmp_path,
               check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("fmnist-train: error: optimizer.lr cannot change in a resumed run"), proc.stderr
    # A group is compared by the option chosen: an experiment is no key of the config, and was dropped unnoticed.
    proc = cli("fmnist-train", "hydra.run.dir=run", "resume=auto", "experiment=mnist_speedrun", cwd=tmp_path,
               check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("fmnist-train: error: experiment cannot change in a resumed run"), proc.stderr


def test_resume_latest_continues_the_newest_run_under_outputs(tmp_path: Path):
    """What `ckpt=` left out means to fmnist-eval, for a resume: no run directory to copy from the log."""
    proc = cli("fmnist-train", "resume=latest", cwd=tmp_path, check=False)
    assert one_line_error(proc).endswith("resume=latest: no run with a last.pt under outputs/ or multirun/ here; "
                                         "give its directory, resume=RUN_DIR")
    assert list(tmp_path.iterdir()) == []
    for seed in ("1", "2"):
        cli("fmnist-train", *RECIPE[:2], "epochs=1", "progress=false", f"seed={seed}", cwd=tmp_path)
    older, newer = sorted((tmp_path / "outputs").glob("*/*"), key=lambda d: (d / "last.pt").stat().st_mtime)
    proc = cli("fmnist-train", "resume=latest", "epochs=2", "progress=false", cwd=tmp_path)
    assert proc.stdout.strip().splitlines()[-1].endswith(f"artifacts in {newer.absolute()}"), proc.stdout
    assert [len(json.loads((d / "metrics.json").read_text())["history"]) for d in (older, newer)] == [1, 2]
    assert load_checkpoint(newer / "last.pt")["config"]["seed"] == 2
    assert sorted((tmp_path / "outputs").glob("*/*")) == sorted([older, newer])


def test_a_refused_resume_leaves_the_run_as_it_was(tmp_path: Path):
    """A one-cycle schedule cannot be stepped past its end: resuming for more epochs is refused before anything
    runs, and the completed run keeps its files, its log and its status (it did not fail)."""
    cli("fmnist-train", *RECIPE[:2], "epochs=1", "scheduler=onecycle", "progress=false", "hydra.run.dir=run",
        cwd=tmp_path)
    names = ("best.pt", "last.pt", "metrics.json", "report.html", "train.log", ".hydra/overrides.yaml")
    before = {name: (tmp_path / "run" / name).read_bytes() for name in names}
    for args, says in [(("epochs=2",), "epochs=2 runs past the end of the one-cycle schedule (scheduler.epochs=1)"),
                       (("model=cnn",), "model cannot change in a resumed run"),
                       (("hydra.run.dir=run", "resume=auto", "optimizer.lr=0.5"), "optimizer.lr cannot change")]:
        resume = () if "resume=auto" in args else (f"resume={tmp_path / 'run'}",)
        proc = cli("fmnist-train", *resume, *args, "progress=false", cwd=tmp_path, check=False)
        assert says in one_line_error(proc)
        assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout.strip(), (proc.stdout, proc.stderr)
        assert {name: (tmp_path / "run" / name).read_bytes() for name in names} == before, args
    proc = cli("fmnist-train", f"resume={tmp_path / 'run'}", "device=mps", "progress=false", cwd=tmp_path,
               check=False)  # refused later, where the run's device is chosen (no MPS on Linux)
    assert proc.returncode == 2 and "device=mps was asked for" in proc.stderr, proc.stderr
    assert {name: (tmp_path / "run" / name).read_bytes() for name in names} == before


def test_an_unforeseen_error_is_recorded_in_the_run_before_its_traceback(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    from fmnist.train import run as run_module

    def bug(*args, **kwargs):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(run_module, "evaluate", bug)
    with pytest.raises(RuntimeError, match="a bug"):  # a bug keeps its traceback
        run_module.run_training(settings(*RECIPE[:2], "epochs=1", "progress=false"), tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == "RuntimeError: a bug over two lines"
    assert 'class="status failed"' in (tmp_path / "run" / "report.html").read_text()


def test_failure_between_write_and_rename_keeps_the_previous_checkpoint(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, path)

    def crash(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "injected failure before rename")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(UserError, match="could not write .*last.pt"):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    with pytest.raises(UserError):  # written by save_checkpoint directly, so it lacks a run's fields
        load_checkpoint(path)
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_disk_full_is_a_clear_error_and_the_previous_checkpoint_survives(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(UserError, match="no space left on device"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_unwritable_checkpoint_path_is_a_one_line_error(tmp_path: Path):
    (tmp_path / "run" / "last.pt").mkdir(parents=True)  # something that is not a file is in the way
    proc = cli("fmnist-train", *RECIPE[:2], "epochs=1", "progress=false", "hydra.run.dir=run", cwd=tmp_path,
               check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "could not write" in proc.stderr and "last.pt" in proc.stderr
    assert "epoch 1/1 | train loss" in proc.stdout  # the epoch was measured: said before its files failed


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only directory")
def test_read_only_output_directory(tmp_path: Path):
    out = tmp_path / "ro"
    out.mkdir()
    cli("fmnist-train", *RECIPE[:2], "epochs=1", "progress=false", f"hydra.run.dir={out}", cwd=tmp_path)
    out.chmod(0o555)
    try:
        proc = cli("fmnist-train", *RECIPE[:2], "epochs=2", "progress=false", f"hydra.run.dir={out}",
                   "resume=auto", "hydra.output_subdir=null", "hydra/job_logging=none", cwd=tmp_path, check=False)
    finally:
        out.chmod(0o755)
    assert proc.returncode == 2 and "could not write" in proc.stderr
    load_checkpoint(out / "last.pt")


def test_nan_stop_names_epoch_step_and_last_good_checkpoint(tmp_path: Path):
    proc = cli("fmnist-train", "model=mlp", "dataset=mnist", "optimizer=sgd", "optimizer.lr=1e12",
               "optimizer.momentum=0.0", "epochs=2", "batch_size=8", "progress=false", "hydra.run.dir=r",
               cwd=tmp_path, check=False)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "epoch 1:" in line and "NaN/inf at step" in line and "no checkpoint was written yet" in line


def test_step_checkpoints_never_hold_diverged_weights(tmp_path: Path):
    proc = cli("fmnist-train", "model=mlp", "dataset=mnist", "optimizer=sgd", "optimizer.lr=1e6",
               "optimizer.momentum=0.0", "epochs=2", "batch_size=8", "checkpoint_every_steps=1", "progress=false",
               "hydra.run.dir=r", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "NaN/inf" in proc.stderr
    assert "the last good checkpoint is" in proc.stderr  # the first steps were finite and were saved
    weights = load_checkpoint(tmp_path / "r" / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())


# ---- a run directory belongs to one run ----------------------------------------------------------------


def test_a_second_run_into_a_used_directory_is_refused_and_changes_nothing(tmp_path: Path):
    cli("fmnist-train", *RECIPE[:2], "epochs=1", "progress=false", "hydra.run.dir=run", cwd=tmp_path)
    names = ("best.pt", "last.pt", "metrics.json", "train.log", ".hydra/config.yaml", ".hydra/overrides.yaml")
    before = {name: (tmp_path / "run" / name).read_bytes() for name in names}
    proc = cli("fmnist-train", *RECIPE[:2], "epochs=2", "progress=false", "hydra.run.dir=run", cwd=tmp_path,
               check=False)
    line = one_line_error(proc)
    assert "already holds a run" in line and "resume=auto" in line and len(proc.stderr.splitlines()) == 1
    assert {name: (tmp_path / "run" / name).read_bytes() for name in before} == before


def test_two_runs_into_one_directory_at_once_the_second_is_refused(tmp_path: Path):
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".fmnist.lock", "w") as held:  # what a running fmnist-train holds
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242")
        held.flush()
        proc = cli("fmnist-train", *RECIPE[:2], "epochs=1", "progress=false", "hydra.run.dir=run", "resume=auto",
                   cwd=tmp_path, check=False)
    assert "in use by another fmnist-train (pid 4242)" in one_line_error(proc)
    assert [p.name for p in run.iterdir()] == [".fmnist.lock"]  # neither Hydra's log and .hydra/ nor the run's


# ---- disk full -----------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 3 MiB tmpfs: room for the run's small files, not for an mlp checkpoint with Adam's state."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip() or 'not permitted'}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_on_a_real_small_filesystem(small_disk: Path, tmp_path: Path):
    proc = cli("fmnist-train", "model=mlp", "model.hidden=[512,512]", "dataset=mnist", "epochs=1",
               "progress=false", f"hydra.run.dir={small_disk / 'run'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "could not write" in line and "no space left on device" in line, line
    metrics = small_disk / "run" / "metrics.json"
    assert not metrics.exists() or json.loads(metrics.read_text())["status"] != "completed"
    assert not list((small_disk / "run").glob(".*.tmp*"))  # no half-written temporary left


@pytest.mark.parametrize("failure", ["oserror", "torch-runtimeerror"])
def test_injected_disk_full_in_any_writer_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      failure: str):
    from collections import namedtuple

    from fmnist.artifacts.plots import plot_curves

    def full(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        if failure == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 0))
    target = tmp_path / "metrics.json"
    target.write_text("previous")
    with pytest.raises(UserError, match=r"could not write .*metrics.json: no space left on device"):
        atomic.write_atomically(target, full)
    assert target.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    monkeypatch.setattr(atomic.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(UserError, match="no space left on device"):  # the figures go through the same writer
        plot_curves([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "train_acc": 0.5, "val_acc": 0.5}],
                    tmp_path / "curves.png")


def test_a_failed_writer_lets_go_of_its_file_at_once(tmp_path: Path):
    """torch.save on a full disk fails twice (the write, then its writer's end): the frames of both errors held
    the deleted temporary file open, so the disk stayed full while the run recorded its failure (metrics.json
    kept "running")."""
    held: list[weakref.ref] = []

    def write_into(handle: BinaryIO) -> None:
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full(tmp: Path) -> None:
        handle = tmp.open("wb")
        held.append(weakref.ref(handle))
        try:
            write_into(handle)
        except OSError:
            raise OSError(errno.ENOSPC, "closing failed too") from None

    with pytest.raises(UserError, match="no space left on device") as failed:
        atomic.write_atomically(tmp_path / "last.pt", full)
    assert failed.value.__context__ is not None and held[0]() is None  # the error lives, the file is gone
    assert list(tmp_path.iterdir()) == []


def test_a_bug_in_a_writer_is_not_mistaken_for_a_full_disk(tmp_path: Path):
    def bug(tmp: Path) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        atomic.write_atomically(tmp_path / "x", bug)


def test_skip_batch_stops_when_too_much_of_an_epoch_was_skipped(tmp_path: Path):
    proc = cli("fmnist-train", "model=mlp", "dataset=mnist", "optimizer=sgd", "optimizer.lr=1e12",
               "optimizer.momentum=0.0", "on_nan=skip_batch", "epochs=2", "batch_size=8", "progress=false",
               "hydra.run.dir=r", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "epoch 1:" in line and "skip_batch_limit=0.25" in line
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["history"] == []


def test_a_directory_target_is_checked_without_creating_anything(tmp_path: Path):
    """What fmnist-eval/predict ask of out_dir before any work: the same answer as ensure_dir, nothing made."""
    (tmp_path / "taken").write_text("a file")
    assert atomic.check_dir_target(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    for blocked in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        with pytest.raises(UserError, match="a file is in the way") as checked:
            atomic.check_dir_target(blocked)
        with pytest.raises(UserError) as made:
            atomic.ensure_dir(blocked)
        assert str(checked.value) == str(made.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_taking_turns_where_a_file_system_has_no_locks_or_the_lock_cannot_be_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Some NFS mounts answer flock with ENOLCK: the writers go on without turns, as they did before there
    were any. A lock file that cannot be made is one line naming it."""
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with atomic.taking_turns(tmp_path / "sweep" / ".lock"):
        (tmp_path / "sweep" / "written").write_text("x")
    assert (tmp_path / "sweep" / "written").read_text() == "x"
    (tmp_path / "taken").mkdir()
    with pytest.raises(UserError, match=r"could not write .*taken: Is a directory"), \
            atomic.taking_turns(tmp_path / "taken"):
        pass


def test_a_lock_file_its_holder_removed_is_not_shared_by_the_next_two(tmp_path: Path):
    """A failed download tidies its lock file away as it leaves. The process that waited on that file gets the
    lock on a file no longer there; one arriving then makes a new file at the path: each would hold "the" lock
    at once, unless the waiter takes its turn again on the path's current file."""
    import threading

    lock, inside, most = tmp_path / "data" / ".lock", [0], [0]
    counted = threading.Lock()

    def take_turn() -> None:
        with atomic.taking_turns(lock):
            with counted:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.5)
            with counted:
                inside[0] -= 1

    with atomic.taking_turns(lock):
        waiter = threading.Thread(target=take_turn)
        waiter.start()
        time.sleep(0.3)  # the waiter now waits on this file
        lock.unlink()
        (tmp_path / "data").rmdir()
    take_turn()
    waiter.join()
    assert most[0] == 1


def test_a_typed_path_expands_home_as_a_shell_does(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """~ is the home; ~name of no such user stays as typed (pathlib raises there, a traceback for the user)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_path("~/runs/best.pt") == tmp_path / "runs" / "best.pt"
    assert user_path("~nobody_fmnist/best.pt") == Path("~nobody_fmnist/best.pt")
    assert user_path("runs") == Path("runs")


def test_a_named_file_that_is_not_a_file_says_what_it_is(tmp_path: Path):
    os.mkfifo(tmp_path / "fifo")  # never opened: reading a FIFO would wait forever
    for name, why in (("missing.pt", "does not exist"), (".", "is a directory"), ("fifo", "is not a regular file")):
        with pytest.raises(UserError, match=f"checkpoint .* {why}$"):
            inputs.existing_file(tmp_path / name, "checkpoint")
