"""The CUDA paths: run where a GPU is present, skipped everywhere else.

    python -m pytest -q tests/test_cuda.py        # on a machine with a GPU

They check what the CPU tests cannot: the whole training step replayed as a CUDA graph trains exactly
like the eager loop, and the CLI trains on the GPU with the fast settings and hands a checkpoint the CPU
can read.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import FAST, cli, console_script, settings, torchrun

from fmnist.artifacts.checkpoint import load_checkpoint
from fmnist.data.batches import make_batches
from fmnist.runtime import resolve_precision
from fmnist.train.loop import train_epochs
from fmnist.train.setup import build_training
from fmnist.train.step import make_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def train(compile_mode: str, epochs: int, *overrides: str) -> tuple[torch.nn.Module, list[float]]:
    """A small mlp trained eagerly or through the captured step: (model, per-epoch mean loss)."""
    cfg = settings("model=mlp", "dataset=mnist", "batch_size=32", "precision=fp32", "model.dropout=0",
                   f"compile={compile_mode}", *overrides)
    device = torch.device("cuda")
    torch.manual_seed(0)
    batches = make_batches(cfg.dataset, "train", device, batch_size=cfg.batch_size, seed=cfg.seed, training=True)
    t = build_training(cfg, device, torch.float32, len(batches))
    runner = make_step(cfg.compile, t, batches, device=device, dtype=torch.float32)
    stats = list(train_epochs(runner, batches, 1, epochs))
    assert all(s.samples == batches.num_samples for s in stats)
    return t.model, [s.loss for s in stats]


def test_cudagraph_step_trains_like_the_eager_loop():
    """Same seed, same batches, no randomness inside the step: the replayed graph reaches the same weights
    (capture after warm-up, the eager last partial batch and the running sums included)."""
    eager, eager_losses = train("none", 3)
    graphed, graphed_losses = train("cudagraph", 3)
    assert graphed_losses == pytest.approx(eager_losses, rel=1e-4)
    for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name


def test_cudagraph_with_augmentation_and_dropout_learns():
    _, losses = train("cudagraph", 3, "model.dropout=0.2", "dataset.augment.crop_padding=2",
                             "dataset.augment.hflip=true", "dataset.augment.rotation=10")
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@pytest.mark.parametrize(("extra", "chosen"), [
    ((), "cudagraph"),  # compile=auto, the default
    (("scheduler=cosine",), "none"),  # auto, where the captured step cannot follow the learning rate
    (("compile=torch",), "torch"),
    (("data.loader=torchvision",), "none"),
])
def test_cli_trains_on_cuda_and_the_cpu_reads_the_checkpoint(tmp_path: Path, extra: tuple[str, ...], chosen: str):
    cli("fmnist-train", "device=cuda", "model=cnn", "model.channels=[8,16]", "model.hidden=[32]",
        "dataset=fashion", *FAST, *extra, "hydra.run.dir=run", cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["test"]["accuracy"] > 0.5 and metrics["compile"] == chosen
    assert (f"compile {chosen}" in (tmp_path / "run" / "train.log").read_text()) == (chosen != "none")
    out = cli("fmnist-eval", f"ckpt={tmp_path / 'run' / 'best.pt'}", "device=cpu", cwd=tmp_path).stdout
    assert "accuracy" in out.lower()


def test_a_captured_run_stopped_part_way_resumes_and_finishes(tmp_path: Path):
    """compile=auto's captured step through Ctrl-C and resume=auto: last.pt written between replays, the
    interrupted epoch continued through a graph captured anew."""
    recipe = ("device=cuda", "model=mlp", "dataset=mnist", "batch_size=16", "progress=false",
              "checkpoint_every_steps=2", "hydra.run.dir=run")
    proc = subprocess.Popen([console_script("fmnist-train"), *recipe, "epochs=300"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last, deadline = tmp_path / "run" / "last.pt", time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)  # past the warm-up steps and the capture: replays
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    done = load_checkpoint(last)["epoch"]
    cli("fmnist-train", *recipe, "resume=auto", f"epochs={done + 1}", cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["compile"] == "cudagraph"
    assert len(metrics["history"]) == done + 1 and metrics["test"]["accuracy"] > 0.5


def test_bf16_is_the_cuda_default():
    if torch.cuda.is_bf16_supported():
        assert resolve_precision(settings().precision, torch.device("cuda")) is torch.bfloat16


def test_torchrun_on_one_gpu_runs_ddp_over_nccl(tmp_path: Path):
    """torchrun with one process still takes the distributed path: process group (nccl for CUDA tensors),
    DistributedDataParallel, reduced metrics; its checkpoint is the plain model."""
    proc = torchrun("device=cuda", "model=cnn", "model.channels=[8,16]", "model.hidden=[32]", "dataset=fashion",
                    *FAST, "hydra.run.dir=run", cwd=tmp_path, nproc=1)
    assert "distributed: 1 processes" in proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["test"]["samples"] == 100
    cli("fmnist-eval", f"ckpt={tmp_path / 'run' / 'best.pt'}", "device=cpu", cwd=tmp_path)
