"""The only loop over batches: one training epoch, evaluation, and the forward pass behind predictions.
Train, eval and predict all use it.

Training and evaluation keep their running sums on the device and read them back once per epoch (and
when the progress bar refreshes), so a GPU is never stalled by a per-batch `.item()`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from fmnist.errors import UserError
from fmnist.loaders import Batches
from fmnist.runtime import autocast, synchronize

REFRESH_EVERY = 25  # batches between progress-bar updates (each costs one host sync)


@dataclass
class EpochStats:
    """Running sums of a (possibly partial) epoch: exact, so a resumed epoch ends with the same numbers."""

    loss_sum: float
    correct: int
    samples: int
    seconds: float
    steps: int
    completed: bool = True
    skipped: int = 0  # batches whose loss was NaN/inf, with on_nan=skip_batch
    warmup_seconds: float = 0.0  # one-time compilation / graph capture at the start, inside `seconds`
    warmup_samples: int = 0  # the samples trained during that warm-up

    @property
    def loss(self) -> float:
        """NaN for an epoch that trained on nothing (every batch skipped): never a made-up 0."""
        return self.loss_sum / self.samples if self.samples else math.nan

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples if self.samples else math.nan

    @property
    def samples_per_s(self) -> float:
        """Steady-state throughput: the one-time warm-up is left out."""
        seconds = self.seconds - self.warmup_seconds
        return (self.samples - self.warmup_samples) / seconds if seconds > 0 else math.nan


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    confusion: torch.Tensor  # (C, C) int64 on the CPU, rows = true class, columns = predicted
    seconds: float
    probs: torch.Tensor | None = None  # (N, C) class probabilities, when asked for
    labels: torch.Tensor | None = None  # (N,)

    @property
    def samples(self) -> int:
        return int(self.confusion.sum())


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int) -> None:
        super().__init__(f"the training loss became NaN/inf at step {step} of the epoch")
        self.step = step


def train_one_epoch(model: nn.Module, batches: Batches, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, *,
                    device: torch.device, dtype: torch.dtype, scaler: torch.amp.GradScaler | None = None,
                    step_scheduler: Callable[[], None] | None = None, progress: bool = False,
                    desc: str = "train", runner: GraphedStep | None = None, start: EpochStats | None = None,
                    after_step: Callable[[int, Callable[[], EpochStats]], bool] | None = None,
                    skip_nonfinite: bool = False, warmup_steps: int = 0) -> EpochStats:
    """One pass over `batches` with an optimizer step per batch; raises NonFiniteLoss on NaN/inf.

    `start` continues a partial epoch (its batches are skipped, its sums carried on). `after_step` is
    called after every batch with the step number and a function that reads the stats so far (one host
    sync, so only when needed); it returns True to stop early, and the result is then a partial epoch
    (completed=False) that a later call can continue. With `skip_nonfinite` a batch whose loss is
    NaN/inf gets no optimizer step (one host sync per batch). With a `runner` (compile=cudagraph) full
    batches replay one captured CUDA graph; a last partial batch runs eagerly. The first `warmup_steps`
    steps (compilation, graph capture) are timed apart (one host sync), so that samples/s is the steady
    state and the one-time cost is reported as such.
    """
    model.train()
    start = start or EpochStats(0.0, 0, 0, 0.0, 0)
    loss_sum = torch.tensor(start.loss_sum, device=device)
    correct = torch.tensor(start.correct, device=device, dtype=torch.int64)
    seen, skipped, step = start.samples, start.skipped, start.steps
    warmup_seconds, warmup_samples = start.warmup_seconds, start.warmup_samples
    clock = time.perf_counter()

    def stats(completed: bool) -> EpochStats:
        total_loss, total_correct = _totals(loss_sum, correct, runner)
        return EpochStats(total_loss.item(), int(total_correct.item()), seen,
                          start.seconds + time.perf_counter() - clock, step, completed, skipped,
                          warmup_seconds, warmup_samples)

    def eager_step(x: torch.Tensor, y: torch.Tensor) -> int:
        """One optimizer step; returns the samples it counted (0 for a skipped batch)."""
        nonlocal skipped
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, dtype):
            out = model(x)
            loss = loss_fn(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if skip_nonfinite and not torch.isfinite(loss):
            skipped += 1
            return 0
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        loss_sum.add_(loss.detach(), alpha=len(y))
        correct.add_((out.detach().argmax(1) == y).sum())
        return len(y)

    if runner is not None:
        runner.reset()
        items: Iterable = runner.batches.index_batches(step)
    else:
        items = batches.iter_from(step)
    bar = tqdm(items, total=len(batches), initial=step, desc=desc, disable=not progress, leave=False,
               dynamic_ncols=True)
    for item in bar:
        step += 1
        if runner is None:
            seen += eager_step(*item)
        elif len(item) == runner.batch_size:
            runner.step(item)
            seen += len(item)
        else:  # inside a graph augmentation draws from the default generator; outside it too
            seen += eager_step(*runner.batches.gather(item, None))
        if step_scheduler is not None:
            step_scheduler()
        if warmup_steps and step - start.steps == warmup_steps:
            synchronize(device)
            warmup_seconds += time.perf_counter() - clock
            warmup_samples += seen - start.samples
        if step % REFRESH_EVERY == 0:
            now = stats(completed=False)
            if progress:
                bar.set_postfix(loss=f"{now.loss:.4f}", acc=f"{now.accuracy:.2%}")
            if not math.isfinite(now.loss_sum):
                raise NonFiniteLoss(step)
        if after_step is not None and step < len(batches) and after_step(step, lambda: stats(completed=False)):
            bar.close()
            return stats(completed=False)
    bar.close()
    result = stats(completed=True)
    if not math.isfinite(result.loss_sum):
        raise NonFiniteLoss(step)
    return result


def _totals(loss_sum: torch.Tensor, correct: torch.Tensor, runner: GraphedStep | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    if runner is None:
        return loss_sum, correct
    return loss_sum + runner.loss_sum, correct + runner.correct


class GraphedStep:
    """The whole training step for one full batch, captured once as a CUDA graph and replayed.

    Static buffers: the batch's indices (copied in before each replay) and the running loss/correct sums.
    The data are already on the device (TensorBatches), so a replay does gather, normalise, augment,
    forward, backward and the optimizer step with no host work beyond one index copy. The first
    WARMUP calls run eagerly on a side stream (as CUDA graphs require), then the step is captured.
    """

    WARMUP = 3

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, batches: Any,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.loss_fn, self.optimizer, self.batches = model, loss_fn, optimizer, batches
        self.device, self.dtype = device, dtype
        self.batch_size = batches.batch_size
        self.idx = torch.zeros(self.batch_size, dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()

    def _body(self) -> None:
        x, y = self.batches.gather(self.idx, None)
        with autocast(self.device, self.dtype, cache=False):
            out = self.model(x)
            loss = self.loss_fn(out.float(), y)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach() * self.batch_size
        self.correct += (out.detach().argmax(1) == y).sum()

    def step(self, idx: torch.Tensor) -> None:
        self.idx.copy_(idx, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
            return
        self.calls += 1
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            self._body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self.calls == self.WARMUP:
            # The captured backward writes fresh gradients each replay: start capture from no gradients.
            # Capture records the kernels without running them, so this batch is not trained twice.
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body()
            self.graph = graph


def make_step_runner(compile_mode: str, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                     batches: Any, *, device: torch.device, dtype: torch.dtype) -> GraphedStep | None:
    """A GraphedStep for compile=cudagraph on CUDA with device-resident data; None means the eager loop."""
    if compile_mode != "cudagraph":
        return None
    if device.type != "cuda":
        raise UserError("compile=cudagraph needs a CUDA device; use compile=none or compile=torch")
    if not hasattr(batches, "index_batches"):
        raise UserError("compile=cudagraph needs data.loader=tensor (the data must live on the GPU)")
    return GraphedStep(model, loss_fn, optimizer, batches, device, dtype)


def _forward(model: nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with autocast(device, dtype):
        return model(x).float()


@torch.inference_mode()
def predict_probs(model: nn.Module, x: torch.Tensor, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Class probabilities for a normalised batch (softmax of logits, or exp of log-probabilities: the same)."""
    model.eval()
    return _forward(model, x.to(device), device, dtype).softmax(1)


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: nn.Module,
             num_classes: int, *, device: torch.device, dtype: torch.dtype, progress: bool = False,
             keep_probs: bool = False, desc: str = "eval") -> EvalResult:
    """Loss, accuracy and confusion matrix over `batches`; optionally every sample's class probabilities."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    probs, labels = [], []
    start = time.perf_counter()
    for x, y in tqdm(batches, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = _forward(model, x, device, dtype)
        loss_sum += loss_fn(out, y) * len(y)
        confusion += torch.bincount(y * num_classes + out.argmax(1), minlength=num_classes * num_classes)
        if keep_probs:
            probs.append(out.softmax(1).cpu())
            labels.append(y.cpu())
    confusion = confusion.view(num_classes, num_classes).cpu()
    n = int(confusion.sum())
    return EvalResult(
        loss=loss_sum.item() / max(n, 1),
        accuracy=int(confusion.diag().sum()) / max(n, 1),
        confusion=confusion,
        seconds=time.perf_counter() - start,
        probs=torch.cat(probs) if keep_probs and probs else None,
        labels=torch.cat(labels) if keep_probs and labels else None,
    )
