"""The only loop over batches: one training epoch, and evaluation. Train, eval and predict all use it.

Both keep their running sums on the device and read them back once per epoch (and when the progress
bar refreshes), so a GPU is never stalled by a per-batch `.item()`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from fmnist.runtime import autocast

REFRESH_EVERY = 25  # batches between progress-bar updates (each costs one host sync)


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    samples: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.nan


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


def train_one_epoch(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: nn.Module,
                    optimizer: torch.optim.Optimizer, *, device: torch.device, dtype: torch.dtype,
                    scaler: torch.amp.GradScaler | None = None,
                    step_scheduler: Callable[[], None] | None = None, progress: bool = False,
                    desc: str = "train") -> EpochStats:
    """One pass over `batches` with an optimizer step per batch; raises NonFiniteLoss on NaN/inf."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    start = time.perf_counter()
    bar = tqdm(batches, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step, (x, y) in enumerate(bar, 1):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, dtype):
            out = model(x)
            loss = loss_fn(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if step_scheduler is not None:
            step_scheduler()
        loss_sum += loss.detach() * len(y)
        correct += (out.detach().argmax(1) == y).sum()
        seen += len(y)
        if progress and step % REFRESH_EVERY == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.2%}")
        if step % REFRESH_EVERY == 0 and not torch.isfinite(loss_sum):
            raise NonFiniteLoss(step)
    bar.close()
    total = loss_sum.item()
    if not math.isfinite(total):
        raise NonFiniteLoss(seen)
    return EpochStats(total / max(seen, 1), correct.item() / max(seen, 1), seen, time.perf_counter() - start)


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
        with autocast(device, dtype):
            out = model(x).float()
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
