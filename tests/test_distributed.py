"""Distributed training through torchrun on the CPU (gloo): one run directory written by rank 0 alone, metrics
over the whole split, the same weights as one process at the same global batch, and the world's rules."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import FAST, cli, one_line_error, torchrun, torchrun_command, torchrun_launcher

from fmnist.artifacts.checkpoint import load_checkpoint
from fmnist.data.batches import Shard
from fmnist.train.distributed import LEAVE_TIMEOUT
from fmnist.world import World, current_world

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")

# Deterministic model (no dropout, no BatchNorm) and a global batch whose every step splits evenly in two.
PLAIN = ("model=mlp", "model.dropout=0", "dataset=fashion", "epochs=1", "batch_size=32", "seed=5",
         "progress=false", "precision=fp32",  # fp32 everywhere: bf16 rounds a 16-row batch unlike a 32-row one
         "threads=1")  # a fixed count: CPU results depend on it in their last bits, and threads=auto's varies


def wait_until_free(run: Path, timeout: float = 60) -> None:
    """Until no process holds the run directory's lock (every rank of a killed launcher has ended)."""
    deadline = time.time() + timeout
    with open(run / ".fmnist.lock", "a+") as f:
        while time.time() < deadline:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                time.sleep(0.05)
    raise AssertionError(f"{run} is still locked {timeout}s after its launcher was killed")


def test_shards_partition_the_data():
    order = torch.randperm(11)
    shares = [Shard(r, 2).strided(order) for r in range(2)]
    assert all(len(s) == 6 for s in shares)  # padded by one: both ranks take the same number of steps
    first_step = torch.cat([s[:3] for s in shares]).sort().values  # per-rank batch 3 = global batch 6
    assert torch.equal(first_step, order[:6].sort().values)
    blocks = [Shard(r, 3).block(10) for r in range(3)]
    assert blocks == [(0, 3), (3, 6), (6, 10)]


def test_ranks_come_from_torchrun_or_slurm(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        monkeypatch.delenv(key, raising=False)
    assert current_world() == World()
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task SLURM job is one process
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert current_world() == World()
    for key, value in {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
                       "SLURM_TASKS_PER_NODE": "2(x2)"}.items():
        monkeypatch.setenv(key, value)
    assert current_world() == World(rank=3, size=4, local_rank=1, local_size=2, launched=True)
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    assert current_world() == World(rank=1, size=2, local_rank=1, local_size=2, launched=True)  # torchrun first


def test_two_ranks_one_run_directory_written_by_rank_zero(tmp_path):
    tensorboard = importlib.util.find_spec("tensorboard") is not None  # its step scalars are a collective
    loggers = ("logger=[csv,tensorboard]", "logger.tensorboard.every_steps=2") if tensorboard else ()
    proc = torchrun(*PLAIN, "epochs=2", *loggers, cwd=tmp_path)
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    run = runs[0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["pid"] == int(run.name.rsplit("-", 1)[1])  # rank 0 named the directory and wrote it
    assert metrics["test"]["samples"] == 100  # every test image counted once across the two ranks
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".") and p.name != "tensorboard") == [
        "best.pt", "confusion_matrix.png", "curves.png", "last.pt", "metrics.csv", "metrics.json", "report.html",
        "train.log"]  # no misclassified.png: each rank holds its own block's probabilities only
    if tensorboard:
        assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0's alone
    assert "distributed: 2 processes, global batch 32 = 16 per process" in (run / "train.log").read_text()
    assert (proc.stdout + proc.stderr).count("test accuracy") == 1  # the other rank logs warnings only
    best = load_checkpoint(run / "best.pt")
    assert not any(k.startswith("module.") for k in best["model"])
    cli("fmnist-eval", f"ckpt={run / 'best.pt'}", "out_dir=ev", cwd=tmp_path)
    evaluated = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-12)


def test_two_ranks_train_the_weights_of_one_process(tmp_path):
    torchrun(*PLAIN, "hydra.run.dir=ddp", cwd=tmp_path)
    cli("fmnist-train", *PLAIN, "hydra.run.dir=single", cwd=tmp_path)
    ddp, single = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("ddp", "single"))
    for name, weight in single.items():
        assert torch.allclose(ddp[name], weight, rtol=1e-4, atol=1e-6), name
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text())["history"][0] for d in ("ddp", "single"))
    assert ma["train_loss"] == pytest.approx(mb["train_loss"], rel=1e-5)
    assert ma["val_acc"] == mb["val_acc"]


def test_batch_that_does_not_split_evenly_is_refused(tmp_path, monkeypatch):
    """Checked in each rank before anything starts: no process group, no run directory."""
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    proc = cli("fmnist-train", *FAST, "batch_size=33", cwd=tmp_path, check=False)
    assert "batch_size=33 is the global batch and must divide by the 2 processes" in one_line_error(proc)
    assert not (tmp_path / "outputs").exists()


def test_killed_launcher_resumes_to_the_uninterrupted_result(tmp_path):
    """kill -9 of torchrun mid-epoch: its ranks end with it (none trains on holding the directory), and the
    same command with resume=auto finishes with the weights of a run that was never interrupted."""
    recipe = (*PLAIN, "epochs=20", "checkpoint_every_steps=3")
    launcher = subprocess.Popen(torchrun_command(*recipe, "hydra.run.dir=run"), cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "run" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    wait_until_free(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "running"  # cut short
    torchrun(*recipe, "hydra.run.dir=run", "resume=auto", cwd=tmp_path)
    torchrun(*recipe, "hydra.run.dir=whole", cwd=tmp_path)
    for name in ("last.pt", "best.pt"):
        resumed, whole = (load_checkpoint(tmp_path / d / name)["model"] for d in ("run", "whole"))
        assert all(torch.equal(resumed[k], whole[k]) for k in whole), name
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("run", "whole"))
    assert ma["status"] == "completed" and ma["test"] == mb["test"]
    assert [r["val_acc"] for r in ma["history"]] == [r["val_acc"] for r in mb["history"]]


def test_sigterm_stops_every_rank_and_rank_zero_saves(tmp_path):
    """torchrun forwards SIGTERM to its ranks: they agree on one step to stop at, rank 0 saves last.pt and
    records the interruption, and resume=auto finishes the run."""
    recipe = (*PLAIN, "epochs=30", "checkpoint_every_steps=3")
    launcher = subprocess.Popen(torchrun_command(*recipe, "hydra.run.dir=run"), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "run" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and "SIGTERM" in metrics["error"], (metrics, err)
    torchrun(*recipe, "hydra.run.dir=run", "resume=auto", cwd=tmp_path)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


def test_a_nan_loss_stops_every_rank_with_one_message(tmp_path):
    proc = subprocess.run(torchrun_command(*PLAIN, "optimizer=sgd", "optimizer.lr=1e12", "hydra.run.dir=run"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "NaN/inf" in metrics["error"]
    errors = {line for line in proc.stderr.splitlines() if line.startswith("fmnist-train: error:")}
    assert len(errors) == 1 and "the training loss became NaN/inf" in errors.pop(), proc.stderr  # alike in all ranks


# Rank 0 fails on its own right after a collective, while rank 1 waits in the next one.
FAILS_ALONE = """
import sys, torch, torch.distributed as dist
from fmnist.train.distributed import join
from fmnist.world import current_world
join(current_world())
dist.all_reduce(torch.ones(1))
if dist.get_rank() == 0:
    sys.exit(3)
dist.all_reduce(torch.ones(3))
"""


def test_a_rank_failing_alone_does_not_hang_the_exit_barrier(tmp_path):
    """Each rank waits at exit for the others (so that gloo has released its tensors before the interpreter
    finalizes); one whose peer is stuck in another collective gives up after LEAVE_TIMEOUT, and the launcher
    reports the failure instead of hanging."""
    script = tmp_path / "fails_alone.py"
    script.write_text(FAILS_ALONE)
    started = time.monotonic()
    proc = subprocess.run([*torchrun_launcher(), str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode != 0
    assert time.monotonic() - started < LEAVE_TIMEOUT.total_seconds() + 60, proc.stderr
    assert "terminate called" not in proc.stderr


def test_the_dataloader_path_shards_with_distributed_sampler(tmp_path):
    torchrun(*PLAIN, "data.loader=torchvision", "num_workers=0", "hydra.run.dir=run", cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["test"]["samples"] == 100
    assert metrics["history"][0]["train_acc"] > 0  # sums over both ranks' shares
