"""The only loop over batches: training epochs, evaluation, and the forward pass behind predictions.
Train, eval and predict all use it; scripts/bench.py and the CUDA tests too.

What one step does is the step runner's business (train/step.py); the loop iterates, counts, times,
shows progress and offers a stop point after every step. Running sums stay on the device and are read
back once per epoch (and when the progress bar refreshes).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from fmnist.cpu_share import SHARE
from fmnist.data.batches import Batches
from fmnist.data.transforms import TTA
from fmnist.runtime import autocast, synchronize
from fmnist.train.distributed import Collective
from fmnist.train.step import StepRunner
from fmnist.world import World

ONE_PROCESS = Collective(World())

REFRESH_EVERY = 25  # batches between progress-bar updates (each costs one host sync)
LOG_EVERY = 30.0  # seconds between progress lines when there is no bar (a log file, a cluster job, nohup)

log = logging.getLogger("fmnist")


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
    epoch: int = 0
    lr: float = math.nan  # the learning rate when the epoch began (a per-step scheduler changes it after)

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

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"epoch {epoch}: the training loss became NaN/inf at step {step} of the epoch")
        self.epoch, self.step = epoch, step


def train_one_epoch(runner: StepRunner, batches: Batches, *, epoch: int, start: EpochStats | None = None,
                    after_step: Callable[[int, Callable[[], EpochStats]], bool] | None = None,
                    progress: bool = False, desc: str = "train", ranks: Collective = ONE_PROCESS) -> EpochStats:
    """One pass over `batches`, one runner step per batch; raises NonFiniteLoss on NaN/inf.

    `start` continues a partial epoch (its batches are skipped, its sums carried on). `after_step` is
    called after every batch but the last with the step number and a function that reads the stats so
    far (one host sync, so only when needed); it returns True to stop early, and the result is then a
    partial epoch (completed=False) that a later call can continue. The runner's first `warmup_steps`
    steps (compilation, graph capture) are timed apart (one host sync), so that samples/s is the
    steady state and the one-time cost is reported as such.

    In a distributed run the stats are sums over `ranks` (every rank sees the same numbers, so all stop on
    a NaN together); a continued epoch's sums, already global, are carried on by rank 0 alone.
    """
    runner.net.train()
    lr = start.lr if start is not None else runner.optimizer.param_groups[0]["lr"]
    start = start or EpochStats(0.0, 0, 0, 0.0, 0, epoch=epoch, lr=lr)
    own = start if ranks.world.main else EpochStats(0.0, 0, 0, start.seconds, start.steps, epoch=epoch, lr=lr,
                                                    warmup_seconds=start.warmup_seconds)
    runner.begin(own.loss_sum, own.correct, own.skipped)
    seen, step = own.samples, own.steps
    warmup_seconds, warmup_samples = own.warmup_seconds, own.warmup_samples
    clock = time.perf_counter()

    def stats(completed: bool) -> EpochStats:
        loss_sum, correct = runner.totals()
        sums = [loss_sum.item(), int(correct.item()), seen, warmup_samples]
        if ranks.distributed:
            sums = ranks.sum_(torch.tensor(sums, dtype=torch.float64)).tolist()
        return EpochStats(sums[0], int(sums[1]), int(sums[2]), start.seconds + time.perf_counter() - clock,
                          step, completed, runner.skipped, warmup_seconds, int(sums[3]), epoch, lr)

    bar = tqdm(runner.batches_from(batches, step), total=len(batches), initial=step, desc=desc,
               disable=not progress, leave=False, dynamic_ncols=True)
    next_line = clock + LOG_EVERY
    for item in bar:
        step += 1
        seen += runner(item)
        SHARE.check()
        if not progress and time.perf_counter() >= next_line:
            _log_progress(desc, step - start.steps, step, len(batches), seen - own.samples, clock)
            next_line = time.perf_counter() + LOG_EVERY
        if runner.warmup_steps and runner.calls == runner.warmup_steps:
            synchronize(runner.device)
            warmup_seconds += time.perf_counter() - clock
            warmup_samples += seen - own.samples
        if step % REFRESH_EVERY == 0:
            now = stats(completed=False)
            if progress:
                bar.set_postfix(loss=f"{now.loss:.4f}", acc=f"{now.accuracy:.2%}")
            if not math.isfinite(now.loss_sum):
                raise NonFiniteLoss(epoch, step)
        if after_step is not None and step < len(batches) and after_step(step, lambda: stats(completed=False)):
            bar.close()
            return stats(completed=False)
    bar.close()
    result = stats(completed=True)
    if not math.isfinite(result.loss_sum):
        raise NonFiniteLoss(epoch, step)
    return result


def _log_progress(desc: str, done: int, step: int, total: int, samples: int, clock: float) -> None:
    """One plain line instead of a bar: where the epoch is, how fast, and when it will end."""
    elapsed = time.perf_counter() - clock
    eta = (total - step) * elapsed / max(done, 1)
    log.info("%s: step %d/%d | %s samples/s | ETA %dm%02ds", desc, step, total, f"{samples / elapsed:,.0f}",
             eta // 60, eta % 60)


def train_epochs(runner: StepRunner, batches: Batches, first: int, last: int, *, start: EpochStats | None = None,
                 data_rng: torch.Tensor | None = None,
                 after_step: Callable[[int, Callable[[], EpochStats]], bool] | None = None,
                 progress: bool = False, ranks: Collective = ONE_PROCESS) -> Iterator[EpochStats]:
    """Epochs first..last, each yielded as it ends; a partial epoch (stopped by after_step) ends the run.

    `start` and `data_rng` continue a partial first epoch: its sums, and the augmentation generator's
    state at the step it stopped. Whatever the caller does between epochs (validate, checkpoint, step an
    epoch scheduler) happens before the next epoch begins.
    """
    for epoch in range(first, last + 1):
        batches.set_epoch(epoch)
        if start is not None:
            batches.set_rng_state(data_rng)
        stats = train_one_epoch(runner, batches, epoch=epoch, start=start, after_step=after_step,
                                progress=progress, desc=f"epoch {epoch}/{last}", ranks=ranks)
        start = None
        yield stats
        if not stats.completed:
            return


def _forward(model: nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype,
             tta: TTA | None = None) -> torch.Tensor:
    """The model's output; with `tta`, the mean of the outputs for its views of the batch, as
    log-probabilities (what both the loss and the softmax read correctly, for logits and log-probs alike)."""
    with autocast(device, dtype):
        if not tta:
            return model(x).float()
        views = tta.views(x)
        return (sum(model(v).float() for v in views) / len(views)).log_softmax(1)


@torch.inference_mode()
def predict_probs(model: nn.Module, x: torch.Tensor, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Class probabilities for a normalised batch (softmax of logits, or exp of log-probabilities: the same)."""
    model.eval()
    return _forward(model, x.to(device), device, dtype).softmax(1)


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: nn.Module,
             num_classes: int, *, device: torch.device, dtype: torch.dtype, progress: bool = False,
             keep_probs: bool = False, desc: str = "eval", tta: TTA | None = None,
             ranks: Collective = ONE_PROCESS) -> EvalResult:
    """Loss, accuracy and confusion matrix over `batches`; optionally every sample's class probabilities.
    `tta` averages each image's outputs over its test-time augmentation views. In a
    distributed run each rank evaluates its block and the sums are taken over `ranks`: every rank returns
    the whole split's figures (probabilities stay per rank)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    probs, labels = [], []
    start = time.perf_counter()
    for x, y in tqdm(batches, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = _forward(model, x, device, dtype, tta)
        SHARE.check()
        loss_sum += loss_fn(out, y) * len(y)
        confusion += torch.bincount(y * num_classes + out.argmax(1), minlength=num_classes * num_classes)
        if keep_probs:
            probs.append(out.softmax(1).cpu())
            labels.append(y.cpu())
    ranks.sum_(loss_sum)
    confusion = ranks.sum_(confusion).view(num_classes, num_classes).cpu()
    n = int(confusion.sum())
    return EvalResult(
        loss=loss_sum.item() / max(n, 1),
        accuracy=int(confusion.diag().sum()) / max(n, 1),
        confusion=confusion,
        seconds=time.perf_counter() - start,
        probs=torch.cat(probs) if keep_probs and probs else None,
        labels=torch.cat(labels) if keep_probs and labels else None,
    )
